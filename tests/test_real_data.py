"""VOC, COCO and CUB: adapters through the real pipeline on `tfds.testing.mock_data`, builders on
archives fabricated in the official layouts, COCO rasterization, and the offline stop."""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import matplotlib.path
import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.conftest import REPO, load_config
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import model_setup
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import coco
from wysiwyc.data import cub
from wysiwyc.data import pipeline
from wysiwyc.data import sources
from wysiwyc.data import voc
from wysiwyc.data import voc_segmentation

# ------------------------------------------------------------------------------------ helpers


def _write_metadata(builder, split_sizes):
  """dataset_info.json (with split sizes) as a prepared data set has: what
  `tfds.testing.mock_data(data_dir=...)` reads instead of the real files."""
  infos = [tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in split_sizes.items()]
  builder.info.set_splits(tfds.core.SplitDict(infos))
  os.makedirs(builder.data_path, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)


def _tiny_config(name, arg='smoke'):
  """The data set's config (smoke variant) with small models: compiling VGG-16, ResNet-50 or
  DeepLabV3 steps takes minutes on a CPU (they have their own tests in test_zoo.py and
  test_deeplab.py). The frozen-backbone optimizer (`trainable='head'`) is kept."""
  config = load_config(name, arg)
  config.data.shuffle_buffer = 8
  config.classifier.name = 'simple_cnn'
  config.classifier.kwargs = ml_collections.ConfigDict(
      {'width': 8, 'depth': 2, 'norm': 'batch', 'dropout': 0.0})
  config.explainer.name = 'unet'
  config.explainer.kwargs = ml_collections.ConfigDict({'width': 8, 'depth': 2, 'norm': 'group'})
  return config


def _one_step_each(config, spec, batch):
  """One classifier step and one explainer step on `batch`; their metrics."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh = data_parallel.create_mesh()
  # 'rbg' keys: initializers compile several times faster on a CPU than with threefry.
  rng = jax.random.key(0, impl='rbg')
  classifier = model_setup.build_classifier(config, spec)
  c_tx = train_steps.make_optimizer(config.classifier.train, config.classifier.trainable)
  c_state = train_steps.init_state(classifier, c_tx, rng, config.data.image_size)
  c_step = train_steps.jit_train_step(
      train_steps.make_classifier_train_step(classifier, c_tx, spec.multilabel), mesh)
  c_state, c_metrics = c_step(c_state, data_parallel.shard_batch(batch, mesh), rng)
  explainer = model_setup.build_explainer(config, spec)
  e_tx = train_steps.make_optimizer(config.explainer.train)
  e_state = train_steps.init_state(explainer, e_tx, rng, config.data.image_size)
  before = jax.device_get(e_state.params)
  loss_fn = train_steps.explainer_loss_fn(config, spec.multilabel)
  e_step = train_steps.jit_train_step(
      train_steps.make_explainer_train_step(explainer, classifier, e_tx, loss_fn), mesh, 1)
  e_state, e_metrics = e_step(e_state, c_state.variables(),
                              data_parallel.shard_batch(batch, mesh), rng)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before,
                                         jax.device_get(e_state.params)))
  return jax.device_get(c_metrics), jax.device_get(e_metrics), any(changed)


# ------------------------------------------------------------- mock_data through the pipeline

MOCK_CASES = {
    # config name: (data set, builders to describe, split sizes, classes, multilabel)
    'voc': ('voc2007', [lambda d: tfds.builder('voc/2007', data_dir=d),
                        lambda d: voc_segmentation.Voc2007Segmentation(data_dir=d)],
            {'train': 12, 'validation': 8, 'test': 8}, 20, True),
    'coco': ('coco2014', [lambda d: tfds.builder('coco/2014', data_dir=d),
                          lambda d: coco.Coco2014Segmentation(
                              config=coco.CocoSegmentationConfig.make(1000, 0), data_dir=d)],
             {'train': 72, 'validation': 8, 'test': 8}, 80, True),
    'cub': ('cub2011', [lambda d: tfds.builder('caltech_birds2011', data_dir=d)],
            {'train': 72, 'test': 8}, 200, False),
}


@pytest.mark.parametrize('config_name', sorted(MOCK_CASES))
def test_mock_data_through_pipeline_and_one_step_of_each_stage(config_name, tmp_path):
  name, builders, sizes, num_classes, multilabel = MOCK_CASES[config_name]
  meta = str(tmp_path / 'meta')
  for make in builders:
    _write_metadata(make(meta), sizes)
  config = _tiny_config(config_name)
  with tfds.testing.mock_data(num_examples=8, data_dir=meta):
    assert pipeline.missing_data(config.data) == []
    spec = pipeline.prepare(config.data)
    assert spec.name == name and spec.multilabel == multilabel
    assert len(spec.class_names) == num_classes == len(set(spec.class_names))
    # Standard splits map to the sources: train/validation of the classification set, test of
    # the segmentation set (VOC, COCO) or the test split (CUB).
    expected = {'voc': {'train': 12, 'validation': 8, 'test': 8},
                'coco': {'train': 8, 'validation': 64, 'test': 8},
                'cub': {'train': 8, 'validation': 64, 'test': 8}}[config_name]
    assert spec.num_examples == expected
    batch = next(pipeline.as_numpy(pipeline.make_dataset(config.data, 'train', 4, training=True,
                                                         seed=0)))
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['labels'].shape == (4, num_classes)
    assert set(np.unique(batch['labels'])) <= {0.0, 1.0}
    if not multilabel:
      np.testing.assert_array_equal(batch['labels'].sum(-1), 1.0)
    test = next(pipeline.as_numpy(pipeline.make_dataset(config.data, 'test', 4, training=False,
                                                        seed=0)))
    assert test['class_masks'].shape == (4, 32, 32, num_classes)
    # Binary masks; the foreground covers every class mask (mock masks are random, so whether
    # they match the labels is checked on fabricated archives below).
    assert set(np.unique(test['class_masks'])) <= {0.0, 1.0}
    assert np.all(test['class_masks'].max(-1) <= test['foreground'])
    assert test['foreground'].sum() > 0
    c_metrics, e_metrics, changed = _one_step_each(config, spec, batch)
  assert np.isfinite(c_metrics['loss']) and np.isfinite(e_metrics['loss'])
  assert changed


# ---------------------------------------------------------- VOC archive in the official layout

VOC_IMAGES = {
    # id: (split set, objects in the XML, class index drawn in the segmentation)
    '000005': ('train', ['chair', 'chair', 'pottedplant'], [9, 16]),
    '000007': ('train', ['car'], [7]),
    '000009': ('val', ['horse', 'person'], [13, 15]),
    '000001': ('test', ['dog', 'person'], [12, 15]),
    '000004': ('test', ['car'], [7]),
}


def _voc_segmentation(classes, size=32):
  """A class-index map with one rectangle per class and a 255 border around each."""
  seg = np.zeros((size, size), np.uint8)
  for k, index in enumerate(classes):
    top, left = 3 + 12 * (k % 2), 4 + 11 * k
    seg[top - 1:top + 11, left - 1:left + 9] = voc_segmentation.VOID_INDEX
    seg[top:top + 10, left:left + 8] = index
  return seg


def _voc_xml(image_id, objects):
  parts = ''.join(
      f'<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>'
      f'<difficult>{int(i == 1)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>'
      f'<xmax>9</xmax><ymax>9</ymax></bndbox></object>' for i, name in enumerate(objects))
  return (f'<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>'
          f'<size><width>32</width><height>32</height><depth>3</depth></size>{parts}'
          '</annotation>').encode()


def _add(tar, path, data):
  info = tarfile.TarInfo(path)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fabricate_voc_archives(folder):
  """VOCtrainval/VOCtest tars in the official layout: JPEGs, XMLs, palette PNGs, id lists.
  Returns id -> (JPEG bytes, segmentation indices)."""
  palette = voc_segmentation.voc_palette()
  truth = {}
  members = {'VOCtrainval_06-Nov-2007.tar': ('train', 'val'), 'VOCtest_06-Nov-2007.tar': ('test',)}
  rng = np.random.default_rng(0)
  for archive, sets in members.items():
    with tarfile.open(os.path.join(folder, archive), 'w') as tar:
      base = 'VOCdevkit/VOC2007/'
      for set_name in sets:
        ids = [i for i, (s, _, _) in VOC_IMAGES.items() if s == set_name]
        _add(tar, f'{base}ImageSets/Segmentation/{set_name}.txt', ('\n'.join(ids) + '\n').encode())
        for image_id in ids:
          _, objects, drawn = VOC_IMAGES[image_id]
          image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
          jpeg = io.BytesIO()
          PIL.Image.fromarray(image).save(jpeg, format='JPEG', quality=95)
          seg = _voc_segmentation(drawn)
          png = io.BytesIO()
          indexed = PIL.Image.fromarray(seg, mode='P')
          indexed.putpalette(palette.flatten().tolist())
          indexed.save(png, format='PNG')
          _add(tar, f'{base}JPEGImages/{image_id}.jpg', jpeg.getvalue())
          _add(tar, f'{base}Annotations/{image_id}.xml', _voc_xml(image_id, objects))
          _add(tar, f'{base}SegmentationClass/{image_id}.png', png.getvalue())
          truth[image_id] = (jpeg.getvalue(), seg)
  return truth


def test_voc_palette_is_the_official_colour_map():
  palette = voc_segmentation.voc_palette()
  assert tuple(palette[0]) == (0, 0, 0)
  assert tuple(palette[1]) == (128, 0, 0)      # aeroplane
  assert tuple(palette[15]) == (192, 128, 128)  # person
  assert tuple(palette[255]) == (224, 224, 192)  # void


def test_voc_segmentation_builder_reads_the_official_layout(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  truth = _fabricate_voc_archives(str(manual))
  data_config = load_config('voc', 'smoke').data
  data_config.name = 'voc2007_segmentation'
  data_config.data_dir = str(tmp_path / 'tfds')
  data_config.manual_dir = str(manual)
  spec = pipeline.prepare(data_config)  # archives found in the manual folder: no network
  assert spec.num_examples == {'train': 2, 'validation': 1, 'test': 2}
  builder = voc.make_segmentation_builder(data_config)
  examples = {ex['image/filename'].decode(): ex
              for split in ('train', 'validation', 'test')
              for ex in tfds.as_numpy(builder.as_dataset(split=split))}
  assert sorted(examples) == sorted(f'{i}.jpg' for i in VOC_IMAGES)
  for image_id, (_, objects, drawn) in VOC_IMAGES.items():
    example = examples[f'{image_id}.jpg']
    jpeg, seg = truth[image_id]
    np.testing.assert_array_equal(example['segmentation'][..., 0], seg)  # 255 border kept
    np.testing.assert_array_equal(example['image'], tf.io.decode_jpeg(jpeg).numpy())
    names = [voc.VOC_CLASSES[i] for i in example['labels']]
    assert names == sorted(set(objects))  # every object (difficult too), once
  # Through the pipeline (32x32: no resizing): labels, per-class masks, void as foreground.
  batch = next(pipeline.as_numpy(pipeline.make_dataset(data_config, 'test', 2, training=False,
                                                       seed=0)))
  order = [ex['image/filename'].decode()[:-4]  # the evaluation reads the split in file order
           for ex in tfds.as_numpy(builder.as_dataset(split='test', shuffle_files=False))]
  assert sorted(order) == ['000001', '000004']
  for row, image_id in enumerate(order):
    _, objects, drawn = VOC_IMAGES[image_id]
    seg = truth[image_id][1]
    expected_labels = np.zeros(20)
    expected_labels[[voc.VOC_CLASSES.index(o) for o in objects]] = 1
    np.testing.assert_array_equal(batch['labels'][row], expected_labels)
    for c in range(20):
      np.testing.assert_array_equal(batch['class_masks'][row, ..., c], seg == c + 1)
    np.testing.assert_array_equal(batch['foreground'][row], seg > 0)
    assert (seg == 255).sum() > 0 and batch['foreground'][row][seg == 255].min() == 1


# ----------------------------------------------------------------------------- COCO rasterizing


def _rle_counts(mask):
  """Independent RLE encoder: run lengths of the column-major pixels, starting with zeros."""
  flat = mask.T.reshape(-1).astype(int)
  runs, current, length = [], 0, 0
  for value in flat:
    if value == current:
      length += 1
    else:
      runs.append(length)
      current, length = value, 1
  runs.append(length)
  return runs


def _rle_string(runs):
  """pycocotools' rleToString, written independently from its C description."""
  chars = []
  for i, value in enumerate(runs):
    x = value - runs[i - 2] if i > 2 else value
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = (x != -1) if c & 0x10 else (x != 0)
      if more:
        c |= 0x20
      chars.append(chr(c + 48))
  return ''.join(chars)


def test_rle_decoding_of_counts_and_compressed_strings():
  rng = np.random.default_rng(1)
  mask = np.zeros((23, 17), bool)
  mask[3:15, 2:9] = True
  mask[rng.random(mask.shape) < 0.1] = True
  runs = _rle_counts(mask)
  np.testing.assert_array_equal(coco.rle_mask({'counts': runs, 'size': [23, 17]}, 23, 17), mask)
  np.testing.assert_array_equal(
      coco.rle_mask({'counts': _rle_string(runs), 'size': [23, 17]}, 23, 17), mask)
  assert coco.decode_rle_string(_rle_string([5, 1000, 3, 7, 900, 2])) == [5, 1000, 3, 7, 900, 2]
  with pytest.raises(ValueError, match='pixels'):
    coco.rle_mask({'counts': [3, 4], 'size': [23, 17]}, 23, 17)


def test_polygon_rasterization_takes_pixels_whose_centre_is_inside():
  polygons = [[2.0, 1.0, 15.5, 3.0, 9.0, 12.5, 4.0, 8.0], [16.0, 14.0, 19.0, 14.0, 19.0, 18.0]]
  mask = coco.polygon_mask(polygons, 20, 21)
  rows, cols = np.mgrid[:20, :21]
  centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
  expected = np.zeros(20 * 21, bool)
  for polygon in polygons:
    expected |= matplotlib.path.Path(np.reshape(polygon, (-1, 2))).contains_points(centres)
  # No edge of these polygons passes through a pixel centre, where the two could differ.
  np.testing.assert_array_equal(mask, expected.reshape(20, 21))
  assert mask.sum() > 60


def test_coco_class_mapping_covers_80_of_the_91_ids():
  ids = [i for i, _ in coco.COCO_CATEGORIES]
  assert len(ids) == 80 and ids == sorted(ids)
  assert set(range(1, 92)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
  assert coco.CLASS_INDEX[1] == 0 and coco.CLASS_INDEX[13] == 11 and coco.CLASS_INDEX[90] == 79


def _fabricate_coco_archives(folder):
  """annotations_trainval2014.zip (instances_val2014.json) and val2014.zip with 3 images: two
  annotated (polygons, a crowd RLE), one without annotations."""
  size = {1: (20, 24), 2: (16, 16), 3: (12, 12)}
  images = [{'id': i, 'file_name': f'COCO_val2014_{i:012d}.jpg', 'height': h, 'width': w}
            for i, (h, w) in size.items()]
  crowd = np.zeros((16, 16), bool)
  crowd[4:12, 5:9] = True
  annotations = [
      {'id': 10, 'image_id': 1, 'category_id': 18, 'iscrowd': 0,  # dog
       'segmentation': [[1, 1, 11, 1, 11, 9, 1, 9]]},
      {'id': 11, 'image_id': 1, 'category_id': 18, 'iscrowd': 0,  # a second dog
       'segmentation': [[14, 10, 22, 10, 22, 18, 14, 18]]},
      {'id': 12, 'image_id': 1, 'category_id': 90, 'iscrowd': 0,  # toothbrush
       'segmentation': [[0, 15, 6, 15, 6, 20, 0, 20]]},
      {'id': 13, 'image_id': 2, 'category_id': 1, 'iscrowd': 1,  # person crowd
       'segmentation': {'counts': _rle_counts(crowd), 'size': [16, 16]}},
  ]
  instances = {'images': images, 'annotations': annotations,
               'categories': [{'id': i, 'name': n, 'supercategory': 's'}
                              for i, n in reversed(coco.COCO_CATEGORIES)]}
  with zipfile.ZipFile(os.path.join(folder, 'annotations_trainval2014.zip'), 'w') as z:
    z.writestr('annotations/captions_val2014.json', '{}')
    z.writestr(coco.INSTANCES_MEMBER, json.dumps(instances))
  with zipfile.ZipFile(os.path.join(folder, 'val2014.zip'), 'w') as z:
    for image in images:
      jpeg = io.BytesIO()
      PIL.Image.fromarray(np.full((image['height'], image['width'], 3), 100, np.uint8)).save(
          jpeg, format='JPEG')
      z.writestr(f'val2014/{image["file_name"]}', jpeg.getvalue())
  return crowd


def test_coco_segmentation_builder_rasterizes_the_annotation_file(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  crowd = _fabricate_coco_archives(str(manual))
  builder = coco.Coco2014Segmentation(config=coco.CocoSegmentationConfig.make(5, 0),
                                      data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual)))
  examples = {int(ex['image/id']): ex for ex in tfds.as_numpy(builder.as_dataset(split='test'))}
  assert sorted(examples) == [1, 2]  # the image without annotations is left out
  first = examples[1]
  assert list(first['objects']['label']) == [coco.CLASS_INDEX[18], coco.CLASS_INDEX[90]]
  dog = np.zeros((20, 24), np.uint8)
  dog[1:9, 1:11] = 1
  dog[10:18, 14:22] = 1
  np.testing.assert_array_equal(first['objects']['mask'][0][..., 0], dog)
  brush = np.zeros((20, 24), np.uint8)
  brush[15:20, 0:6] = 1
  np.testing.assert_array_equal(first['objects']['mask'][1][..., 0], brush)
  second = examples[2]
  assert list(second['objects']['label']) == [0]
  np.testing.assert_array_equal(second['objects']['mask'][0][..., 0], crowd)
  # Through the adapter: per-class masks scattered to their class index.
  standard = coco.segmentation_to_standard(
      {'image': first['image'], 'objects': {'label': first['objects']['label'],
                                            'mask': first['objects']['mask']}}, 80)
  masks = standard['class_masks'].numpy()
  assert masks.shape == (20, 24, 80)
  np.testing.assert_array_equal(masks[..., coco.CLASS_INDEX[18]], dog)
  np.testing.assert_array_equal(masks[..., coco.CLASS_INDEX[90]], brush)
  assert masks.sum() == dog.sum() + brush.sum()
  assert standard['labels'].numpy().sum() == 2


def test_coco_evaluation_subset_is_seeded_and_sorted():
  instances = {'images': [{'id': i} for i in range(50, 0, -1)],
               'annotations': [{'image_id': i} for i in range(1, 41)]}
  chosen = coco.select_images(instances, 10, seed=3)
  ids = [image['id'] for image in chosen]
  assert ids == sorted(ids) and len(set(ids)) == 10 and max(ids) <= 40
  assert ids == [image['id'] for image in coco.select_images(instances, 10, seed=3)]
  assert ids != [image['id'] for image in coco.select_images(instances, 10, seed=4)]
  assert len(coco.select_images(instances, 1000, seed=0)) == 40


def test_cub_foreground_is_the_majority_of_annotators():
  mask = np.array([[0, 51, 102], [127, 128, 255]], np.uint8)[..., None]
  standard = cub.to_standard({'image': tf.zeros((2, 3, 3), tf.uint8), 'label': tf.constant(7),
                              'segmentation_mask': tf.constant(mask)}, 200)
  np.testing.assert_array_equal(standard['foreground'].numpy(), [[0, 0, 0], [0, 1, 1]])
  assert standard['labels'].numpy().argmax() == 7 and standard['labels'].numpy().sum() == 1


# ----------------------------------------------------------------------------------- offline


def test_missing_data_and_weights_stop_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.setenv('WYSIWYC_OFFLINE', '1')
  config = load_config('coco')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.weights_dir = str(tmp_path / 'weights')
  workdir = tmp_path / 'work'
  with pytest.raises(errors.UserError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  for name in coco.TFDS_ARCHIVES:
    assert name in message
  assert 'resnet50_weights.h5' in message and 'vgg16' not in message
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual') in message
  assert sorted(os.listdir(tmp_path)) == []  # no workdir, data or weights folder


def test_archives_in_the_manual_folder_count_as_available(tmp_path, monkeypatch):
  monkeypatch.setenv('WYSIWYC_OFFLINE', '1')
  data_config = load_config('cub').data
  data_config.data_dir = str(tmp_path / 'tfds')
  data_config.manual_dir = str(tmp_path / 'manual')
  problems = cub.missing(data_config)
  assert any('CUB_200_2011.tgz' in p for p in problems)
  os.makedirs(tmp_path / 'manual')
  for name in cub.ARCHIVES:
    (tmp_path / 'manual' / name).write_bytes(b'')
  assert not any('CUB_200_2011.tgz' in p for p in cub.missing(data_config))


def test_voc_config_offline_message_from_the_command_line(tmp_path):
  workdir = tmp_path / 'w'
  env = dict(os.environ, WYSIWYC_OFFLINE='1')
  result = subprocess.run(
      [sys.executable, '-m', 'wysiwyc.main', '--config=configs/voc.py', f'--workdir={workdir}',
       f'--config.data.data_dir={tmp_path / "tfds"}', f'--config.weights_dir={tmp_path / "wt"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 2, result.stderr[-3000:]
  err = result.stderr
  assert 'Traceback' not in err
  for needed in ('VOCtrainval_06-Nov-2007.tar', 'VOCtest_06-Nov-2007.tar',
                 str(tmp_path / 'tfds' / 'downloads' / 'manual'), '--config.data.manual_dir',
                 'vgg16_weights.h5', 'resnet50_weights.h5', str(tmp_path / 'wt' / 'flaxmodels'),
                 '--config.weights_dir'):
    assert needed in err, needed
  assert not workdir.exists()
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'wt').exists()


def test_host_reachable_honours_offline_switch(monkeypatch):
  monkeypatch.setenv('WYSIWYC_OFFLINE', '1')
  assert not sources.host_reachable('https://pypi.org/simple')
