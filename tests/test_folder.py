"""Your own image folder ('folder' data set): both layouts on small PNG/JPEG files made here, the
validation cut, the fingerprint, every bad input (the message names the file and line, nothing
is written), and the main job end to end on each layout."""

import glob
import json
import os

import ml_collections
import numpy as np
import PIL.Image
import pytest

from tests.conftest import load_config
from wysiwyc import errors
from wysiwyc.data import folder
from wysiwyc.data import pipeline

CLASSES = ('square', 'disk', 'bar')
SIZES = ((40, 48), (64, 64), (56, 40))  # (height, width): images of differing sizes


# ------------------------------------------------------------------------------ fabrication


def _draw(rng, height, width, classes):
  """uint8 image (H,W,3) with one object per class in `classes`, and its mask (class + 1)."""
  image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
  mask = np.zeros((height, width), np.uint8)
  yy, xx = np.mgrid[:height, :width]
  for slot, c in enumerate(classes):
    cy, cx = height // 2, width * (1 + 2 * slot) // (2 * len(classes))
    r = min(height, width) // 6
    shape = [(abs(yy - cy) <= r) & (abs(xx - cx) <= r),
             (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
             (abs(yy - cy) <= r // 2) & (abs(xx - cx) <= r)][c]
    image[shape] = (np.array([230, 40, 40]), np.array([40, 230, 40]), np.array([40, 40, 230]))[c]
    mask[shape] = c + 1
  return image, mask


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith('.jpg'):
    PIL.Image.fromarray(array).save(path, quality=95)
  else:
    PIL.Image.fromarray(array).save(path)


def make_manifest(root, counts=(('train', 16), ('validation', 4), ('test', 6)), seed=0):
  """A manifest folder: classes.txt, one CSV a split with masks; 1 or 2 objects an image."""
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('\n'.join(CLASSES) + '\n')
  for split, count in counts:
    lines = ['image,labels,mask']
    for i in range(count):
      classes = sorted(rng.choice(len(CLASSES), size=1 + i % 2, replace=False))
      image, mask = _draw(rng, *SIZES[i % len(SIZES)], classes)
      name = f'images/{split}_{i}.{"jpg" if i % 3 == 0 else "png"}'
      _save(os.path.join(root, name), image)
      _save(os.path.join(root, f'masks/{split}_{i}.png'), mask)
      lines.append(f'{name},{"|".join(CLASSES[c] for c in classes)},masks/{split}_{i}.png')
    with open(os.path.join(root, f'{split}.csv'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return str(root)


def make_subfolders(root, counts=(('train', 18), ('test', 6)), seed=0):
  """A class-per-subfolder folder (single label, no masks)."""
  rng = np.random.default_rng(seed)
  for split, count in counts:
    for i in range(count):
      c = i % len(CLASSES)
      image, _ = _draw(rng, *SIZES[i % len(SIZES)], [c])
      _save(os.path.join(root, split, CLASSES[c], f'{i}.{"jpg" if i % 2 else "png"}'), image)
  return str(root)


def data_config(root, data_dir, image_size=32):
  config = ml_collections.ConfigDict(dict(
      name='folder', data_dir=str(data_dir), image_size=image_size, flip=False,
      color_jitter=0.0, shuffle_buffer=64, folder=folder.default_folder_config()))
  config.folder.root = str(root)
  return config


def snapshot(root):
  """Every file under `root` with its size and modification time."""
  found = {}
  for directory, _, files in os.walk(root):
    for name in files:
      stat = os.stat(os.path.join(directory, name))
      found[os.path.relpath(os.path.join(directory, name), root)] = (stat.st_size,
                                                                    stat.st_mtime_ns)
  return found


# ----------------------------------------------------------------------------- the builder


def test_manifest_prepares_multilabel_masks_and_reads_batches(tmp_path):
  root = make_manifest(tmp_path / 'mine')
  before = snapshot(root)
  config = data_config(root, tmp_path / 'tfds')
  spec = pipeline.prepare(config)
  assert spec.class_names == CLASSES
  assert spec.multilabel
  assert spec.num_examples == {'train': 16, 'validation': 4, 'test': 6}
  assert spec.unmasked_splits == ()
  batch = next(pipeline.as_numpy(pipeline.make_dataset(config, 'test', 6, training=False,
                                                       seed=0)))
  assert batch['image'].shape == (6, 32, 32, 3)
  assert batch['class_masks'].shape == (6, 32, 32, 3)
  # Every labelled class has its object in its own mask channel, and only those classes.
  area = batch['class_masks'].sum(axis=(1, 2))
  np.testing.assert_array_equal(area > 0, batch['labels'] > 0.5)
  np.testing.assert_array_equal(batch['foreground'], batch['class_masks'].max(-1))
  assert snapshot(root) == before  # nothing written into the folder


def test_subfolders_single_label_validation_cut_and_no_test(tmp_path):
  root = make_subfolders(tmp_path / 'mine', counts=(('train', 20),))
  config = data_config(root, tmp_path / 'tfds')
  spec = pipeline.prepare(config)
  assert spec.class_names == tuple(sorted(CLASSES))
  assert not spec.multilabel
  # 10% of 20 images, by a hash of their paths: the same split every time.
  assert spec.num_examples == {'train': 18, 'validation': 2}
  assert set(spec.unmasked_splits) == {'train', 'validation'}
  listing = folder.read_listing(config)
  assert listing.validation_from_train
  validation = {row.image for row in listing.splits['validation']}
  assert not validation & {row.image for row in listing.splits['train']}
  folder._LISTINGS.clear()  # pylint: disable=protected-access
  assert {row.image for row in folder.read_listing(config).splits['validation']} == validation
  batch = next(pipeline.as_numpy(pipeline.make_dataset(config, 'train', 6, training=True,
                                                       seed=0)))
  np.testing.assert_array_equal(batch['labels'].sum(-1), 1.0)  # one-hot


def test_changed_folder_is_prepared_again_not_served_stale(tmp_path):
  root = make_subfolders(tmp_path / 'mine', counts=(('train', 12), ('validation', 3)))
  config = data_config(root, tmp_path / 'tfds')
  first = folder.make_builder(config)
  pipeline.prepare(config)
  assert folder.make_builder(config).builder_config.name == first.builder_config.name
  assert folder.make_builder(config).is_prepared()
  _save(os.path.join(root, 'train', 'disk', 'extra.png'), np.zeros((20, 20, 3), np.uint8))
  second = folder.make_builder(config)
  assert second.builder_config.name != first.builder_config.name
  assert not second.is_prepared()


# ------------------------------------------------------------------------------- bad input


def _rewrite(path, old, new):
  with open(path) as f:
    text = f.read()
  assert old in text
  with open(path, 'w') as f:
    f.write(text.replace(old, new, 1))


def _break_label(root):
  _rewrite(os.path.join(root, 'test.csv'), 'images/test_2.png,', 'images/test_2.png,dog|')
  return 'test.csv, line 4', "label 'dog' is not in"


def _missing_image(root):
  os.remove(os.path.join(root, 'images', 'train_4.png'))
  return 'train.csv, line 6', "image 'images/train_4.png' not found"


def _unreadable_image(root):
  with open(os.path.join(root, 'images', 'validation_1.png'), 'wb') as f:
    f.write(b'not a png at all')
  return 'validation.csv, line 3', 'not an image that can be read'


def _missing_mask(root):
  os.remove(os.path.join(root, 'masks', 'train_7.png'))
  return 'train.csv, line 9', "mask 'masks/train_7.png' not found"


def _unreadable_mask(root):
  with open(os.path.join(root, 'masks', 'train_2.png'), 'wb') as f:
    f.write(b'\x89PNG broken')
  return 'train.csv, line 4', 'cannot read mask'


def _mask_wrong_size(root):
  _save(os.path.join(root, 'masks', 'test_1.png'), np.zeros((10, 12), np.uint8))
  return 'test.csv, line 3', 'is 12x10 but its image is 64x64'


def _mask_values_above_classes(root):
  mask = np.zeros(SIZES[0], np.uint8)
  mask[:4, :4] = 7
  mask[5, 5] = 255  # ignore: allowed
  _save(os.path.join(root, 'masks', 'train_0.png'), mask)
  return 'train.csv, line 2', 'has pixel values 7; with 3 classes'


def _empty_split(root):
  with open(os.path.join(root, 'validation.csv'), 'w') as f:
    f.write('image,labels,mask\n')
  return 'validation.csv', 'the validation split is empty'


def _duplicated_class(root):
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('square\ndisk\nsquare\n')
  return 'classes.txt, line 3', "class 'square' is already named on line 1"


def _empty_subfolder_split(root):
  os.makedirs(os.path.join(root, 'validation', 'disk'))
  return os.path.join('mine', 'validation'), 'the validation split is empty'


def _unreadable_subfolder_image(root):
  with open(os.path.join(root, 'train', 'bar', '2.png'), 'wb') as f:
    f.write(b'garbage')
  return os.path.join('train', 'bar', '2.png'), 'not an image that can be read'


def _empty_class_folder(root):
  os.makedirs(os.path.join(root, 'train', 'star'))  # would drop the class without a word
  return os.path.join('train', 'star'), 'an empty class folder'


def _class_only_in_test(root):
  image, _ = _draw(np.random.default_rng(1), 32, 32, [0])
  _save(os.path.join(root, 'test', 'star', '0.png'), image)
  return os.path.join('test', 'star'), "class 'star' has no image in the train split"


def _class_without_training_image(root):
  with open(os.path.join(root, 'classes.txt'), 'a') as f:
    f.write('star\n')
  return 'classes.txt, line 4', "class 'star' has no image in the train split"


MANIFEST_CASES = (_break_label, _missing_image, _unreadable_image, _missing_mask,
                  _unreadable_mask, _mask_wrong_size, _mask_values_above_classes, _empty_split,
                  _duplicated_class, _class_without_training_image)
SUBFOLDER_CASES = (_empty_subfolder_split, _unreadable_subfolder_image, _empty_class_folder,
                   _class_only_in_test)


@pytest.mark.parametrize('case', MANIFEST_CASES + SUBFOLDER_CASES,
                         ids=lambda case: case.__name__.strip('_'))
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, case):
  make = make_manifest if case in MANIFEST_CASES else make_subfolders
  root = make(tmp_path / 'mine')
  where, problem = case(root)
  before = snapshot(root)
  data_dir = tmp_path / 'tfds'
  config = data_config(root, data_dir)
  # The main job asks `missing_data` before it writes anything; `prepare` says the same.
  for check in (pipeline.missing_data, pipeline.prepare):
    with pytest.raises(errors.UserError) as raised:
      check(config)
    message = str(raised.value)
    assert where in message and problem in message, message
  assert snapshot(root) == before
  assert not os.path.exists(data_dir) or not os.listdir(data_dir)


# ---------------------------------------------------------------------------- the main job


def _smoke_config(root, data_dir):
  config = load_config('folder', 'smoke')
  config.data.folder.root = str(root)
  config.data.data_dir = str(data_dir)
  return config


def test_a_train_split_smaller_than_a_batch_stops_before_the_workdir_is_written(tmp_path):
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  root = make_subfolders(tmp_path / 'mine')  # 18 train images, 2 of them cut for validation
  config = _smoke_config(root, tmp_path / 'tfds')
  config.classifier.train.batch_size = 32
  with pytest.raises(errors.UserError, match=r'the train split has 16 images, fewer than one '
                     r'batch of 32 \(--config\.classifier\.train\.batch_size=32\); set it to 16'):
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert not os.path.exists(tmp_path / 'work')


def test_main_job_on_a_manifest_with_masks(tmp_path):
  from wysiwyc import explain  # pylint: disable=g-import-not-at-top
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  root = make_manifest(tmp_path / 'mine')
  before = snapshot(root)
  workdir = str(tmp_path / 'work')
  results = train.train_and_evaluate(_smoke_config(root, tmp_path / 'tfds'), workdir)
  for method in ('explainer', 'ground_truth', 'all_0'):
    assert 0 <= results[method]['iou@0.5'] <= 1, method
  assert results['ground_truth']['iou@0.5'] == pytest.approx(1.0)
  assert results['classifier']['num_test_images'] == 6
  assert 0 <= results['explainer']['specificity_own'] <= 1
  for name in ('results.json', 'results.md', 'figures/masks.png', 'figures/training.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  explainer = explain.load(workdir)
  assert explainer.class_names == CLASSES and explainer.multilabel
  image = explain.read_image(os.path.join(root, 'images', 'test_1.png'))
  assert explainer.masks(image[None]).shape == (1,) + image.shape[:2] + (len(CLASSES),)
  assert snapshot(root) == before


def test_main_job_on_subfolders_without_test_masks_says_what_it_cannot_score(tmp_path, caplog):
  from wysiwyc import explain  # pylint: disable=g-import-not-at-top
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  root = make_subfolders(tmp_path / 'mine')
  workdir = str(tmp_path / 'work')
  config = _smoke_config(root, tmp_path / 'tfds')
  assert config.classifier.train.object_masking > 0
  results = train.train_and_evaluate(config, workdir)
  assert 'object_masking=0.5 needs masks on the training images' in caplog.text
  assert 'no ground-truth masks' in results['note'] and results['note'] in caplog.text
  assert results['note'] in open(os.path.join(workdir, 'results.md')).read()
  assert 'iou@0.5' not in results['explainer'] and 'ground_truth' not in results
  assert 0 <= results['explainer']['specificity_own'] <= 1
  assert 0 <= results['classifier']['accuracy_plain'] <= 1
  assert results['classifier']['num_test_images'] == 6
  # Single label: JSON without NaN, a class specificity that is a number, the undefined 'other'
  # said in results.md, no validation IoU against an empty foreground, a predicted class each.
  def no_constant(name):
    raise ValueError(f'results.json holds {name}')
  with open(os.path.join(workdir, 'results.json')) as f:
    parsed = json.loads(f.read(), parse_constant=no_constant)
  explainer_row = parsed['explainer']
  assert isinstance(explainer_row['specificity_runner_up_over_own'], float)
  assert explainer_row['specificity_runner_up_images'] == 6
  assert explainer_row['specificity_other'] is None
  with open(os.path.join(workdir, 'results.md')) as f:
    assert 'explainer.specificity_other (no test image has two present classes' in f.read()
  from wysiwyc import loop  # pylint: disable=g-import-not-at-top
  for stage in ('classifier', 'explainer'):
    history, _ = loop.stage_record(os.path.join(workdir, stage))
    assert history and all('iou@0.5' not in epoch['val'] for epoch in history), stage
  explainer = explain.load(workdir)
  assert not explainer.multilabel
  test_images = sorted(glob.glob(os.path.join(root, 'test', '*', '*')))
  assert explain.explain_files(explainer, test_images, str(tmp_path / 'out')) == []
  for path in test_images:
    stem = os.path.splitext(os.path.basename(path))[0]
    with open(tmp_path / 'out' / f'{stem}.json') as f:
      assert len(json.load(f)['predicted']) == 1, path


def test_no_test_split_no_evaluation_said_on_console_and_in_results(tmp_path, caplog):
  from wysiwyc import evaluation  # pylint: disable=g-import-not-at-top
  root = make_subfolders(tmp_path / 'mine', counts=(('train', 12),))
  config = _smoke_config(root, tmp_path / 'tfds')
  spec = pipeline.prepare(config.data)
  assert 'test' not in spec.num_examples
  workdir = str(tmp_path / 'work')
  # No test split: the stage touches neither the mesh nor the models.
  results = evaluation.evaluate_and_report(config, spec, workdir, None, None, None, None, None)
  assert {k: v for k, v in results.items() if k != 'provenance'} == {
      'note': evaluation.NO_TEST_NOTE}
  assert evaluation.NO_TEST_NOTE in caplog.text
  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  assert evaluation.NO_TEST_NOTE in markdown and '| method |' not in markdown
  assert os.path.getsize(os.path.join(workdir, 'figures', 'training.png')) > 0
  assert not os.path.exists(os.path.join(workdir, 'figures', 'masks.png'))
