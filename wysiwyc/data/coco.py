"""MS COCO 2014 for the pipeline: data sets 'coco2014' and 'coco2014_segmentation'.

Classes: COCO's instance annotations use category ids 1..90 of the 91 in the COCO paper; 80 of
them occur. Class index c (0..79) is the c-th occurring id in increasing order, which is also
the order of TFDS coco/2014's `objects/label` (the `categories` of the annotation file, sorted
by id) and of `COCO_CATEGORIES` below. The 11 ids without instances (12 street sign, 26 hat,
29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window, 69 desk, 71 door, 83 blender, 91 hair
brush) get no index. (The authors kept 91 output slots, indexed by the raw id; 11 were never
targets.)

'coco2014' (the paper's COCO set-up, multi-hot targets from every instance, crowds included):
  train       TFDS coco/2014 'train[:-N]'   (N = data.coco.num_validation, default 5000)
  validation  TFDS coco/2014 'train[-N:]'   (early stopping; the authors also split train2014)
  test        coco2014_segmentation 'test': data.coco.num_eval_images (default 1000, as the
              authors) images of val2014 with at least one instance, drawn with
              data.coco.eval_seed, with ground-truth masks rasterized from
              instances_val2014.json: class c's mask is the union of its instances (crowd RLEs
              included), the foreground the union of all.
TFDS's coco/2014 builder needs all of its archives (train2014, val2014, test2014, test2015 and
three annotation zips, ~40 GB); the segmentation set reads val2014.zip and
annotations_trainval2014.zip, from the manual folder or downloaded.

Rasterization (no pycocotools): polygons by `skimage.draw.polygon` on pixel centres (COCO
coordinates put pixel (i, j)'s centre at (j + 0.5, i + 0.5)), RLEs (counts lists and
compressed strings) decoded in numpy. Polygon edge pixels may differ from pycocotools'.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from typing import Dict, List, Sequence

import ml_collections
import numpy as np
import skimage.draw
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc.data import registry
from wysiwyc.data import sources

# (category id, name) of the 80 categories with instances, in class-index order.
COCO_CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'), (6, 'bus'),
    (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'), (11, 'fire hydrant'),
    (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'), (16, 'bird'), (17, 'cat'),
    (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'), (22, 'elephant'), (23, 'bear'),
    (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'), (28, 'umbrella'), (31, 'handbag'),
    (32, 'tie'), (33, 'suitcase'), (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'),
    (37, 'sports ball'), (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'), (44, 'bottle'),
    (46, 'wine glass'), (47, 'cup'), (48, 'fork'), (49, 'knife'), (50, 'spoon'), (51, 'bowl'),
    (52, 'banana'), (53, 'apple'), (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'),
    (57, 'carrot'), (58, 'hot dog'), (59, 'pizza'), (60, 'donut'), (61, 'cake'), (62, 'chair'),
    (63, 'couch'), (64, 'potted plant'), (65, 'bed'), (67, 'dining table'), (70, 'toilet'),
    (72, 'tv'), (73, 'laptop'), (74, 'mouse'), (75, 'remote'), (76, 'keyboard'),
    (77, 'cell phone'), (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'),
    (82, 'refrigerator'), (84, 'book'), (85, 'clock'), (86, 'vase'), (87, 'scissors'),
    (88, 'teddy bear'), (89, 'hair drier'), (90, 'toothbrush'))
COCO_CLASSES = tuple(name for _, name in COCO_CATEGORIES)
CLASS_INDEX = {category_id: index for index, (category_id, _) in enumerate(COCO_CATEGORIES)}

_ROOT = 'http://images.cocodataset.org/'
# Every archive TFDS's coco/2014 builder downloads (its splits train, validation, test, test2015).
TFDS_ARCHIVES = {name: _ROOT + path for name, path in (
    ('train2014.zip', 'zips/train2014.zip'), ('val2014.zip', 'zips/val2014.zip'),
    ('test2014.zip', 'zips/test2014.zip'), ('test2015.zip', 'zips/test2015.zip'),
    ('annotations_trainval2014.zip', 'annotations/annotations_trainval2014.zip'),
    ('image_info_test2014.zip', 'annotations/image_info_test2014.zip'),
    ('image_info_test2015.zip', 'annotations/image_info_test2015.zip'))}
SEGMENTATION_ARCHIVES = {name: TFDS_ARCHIVES[name]
                         for name in ('val2014.zip', 'annotations_trainval2014.zip')}
INSTANCES_MEMBER = 'annotations/instances_val2014.json'


def default_coco_config() -> ml_collections.ConfigDict:
  """The `coco` field of a data config."""
  return ml_collections.ConfigDict(dict(num_validation=5000, num_eval_images=1000, eval_seed=0))


# -------------------------------------------------------------------------------- rasterizing


def decode_rle_string(counts: str) -> List[int]:
  """pycocotools' compressed RLE string -> run lengths (LEB128-like, 5 bits per character,
  offset 48, runs after the second stored as differences to the run two before)."""
  runs, position = [], 0
  while position < len(counts):
    value, shift, more = 0, 0, True
    while more:
      char = ord(counts[position]) - 48
      value |= (char & 0x1F) << shift
      more = bool(char & 0x20)
      position += 1
      shift += 5
      if not more and char & 0x10:
        value |= -1 << shift
    if len(runs) > 2:
      value += runs[-2]
    runs.append(value)
  return runs


def rle_mask(segmentation: Dict, height: int, width: int) -> np.ndarray:
  """A COCO RLE ({'counts': list or string, 'size': [h, w]}) -> (H,W) bool. Runs alternate
  background/object starting with background, over the pixels in column-major order."""
  counts = segmentation['counts']
  runs = decode_rle_string(counts) if isinstance(counts, str) else list(counts)
  h, w = segmentation.get('size', (height, width))
  if (h, w) != (height, width) or sum(runs) != h * w:
    raise ValueError(f'RLE of size {(h, w)} with {sum(runs)} pixels for a {height}x{width} image.')
  values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
  return values.reshape(w, h).T


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
  """COCO polygons ([x1, y1, x2, y2, ...] each) -> (H,W) bool of the pixels whose centre is
  inside any of them."""
  mask = np.zeros((height, width), bool)
  for polygon in polygons:
    xy = np.asarray(polygon, np.float64).reshape(-1, 2)
    rows, cols = skimage.draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
    mask[rows, cols] = True
  return mask


def annotation_mask(annotation: Dict, height: int, width: int) -> np.ndarray:
  """One instance annotation's segmentation (polygons or RLE) -> (H,W) bool."""
  segmentation = annotation['segmentation']
  if isinstance(segmentation, dict):
    return rle_mask(segmentation, height, width)
  return polygon_mask(segmentation, height, width)


def class_masks(annotations: Sequence[Dict], height: int, width: int) -> Dict[int, np.ndarray]:
  """Class index -> (H,W) uint8 union of that class's instances, for the classes present."""
  masks: Dict[int, np.ndarray] = {}
  for annotation in annotations:
    index = CLASS_INDEX[annotation['category_id']]
    mask = annotation_mask(annotation, height, width)
    masks[index] = np.maximum(masks.get(index, np.zeros((height, width), np.uint8)), mask)
  return masks


def select_images(instances: Dict, num_images: int, seed: int) -> List[Dict]:
  """`num_images` image records (all when fewer) with at least one instance, drawn without
  replacement by `seed` from those sorted by id; returned sorted by id."""
  annotated = {annotation['image_id'] for annotation in instances['annotations']}
  images = sorted((image for image in instances['images'] if image['id'] in annotated),
                  key=lambda image: image['id'])
  if num_images < len(images):
    chosen = np.random.default_rng(seed).choice(len(images), num_images, replace=False)
    images = [images[i] for i in sorted(chosen)]
  return images


def check_categories(instances: Dict) -> None:
  found = tuple(sorted((c['id'], c['name']) for c in instances['categories']))
  if found != COCO_CATEGORIES:
    raise ValueError('The annotation file\'s categories differ from COCO 2014\'s 80 categories; '
                     'is it instances_val2014.json?')


# ------------------------------------------------------------------------------- TFDS builder


@dataclasses.dataclass(eq=False)
class CocoSegmentationConfig(tfds.core.BuilderConfig):
  num_images: int = 1000
  seed: int = 0

  @classmethod
  @functools.lru_cache(maxsize=None)  # TFDS wants the very object for a listed config name
  def make(cls, num_images: int, seed: int) -> 'CocoSegmentationConfig':
    return cls(name=f'val2014_n{num_images}_s{seed}',
               description=f'{num_images} annotated val2014 images drawn with seed {seed}.',
               num_images=num_images, seed=seed)


class Coco2014Segmentation(tfds.core.GeneratorBasedBuilder):
  """COCO val2014 images with per-class masks rasterized from the instance annotations."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  BUILDER_CONFIGS = [CocoSegmentationConfig.make(1000, 0)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Optional: place val2014.zip and annotations_trainval2014.zip in the manual folder; '
      'missing archives are downloaded.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'image/filename': tfds.features.Text(),
            'image/id': np.int64,
            # One entry per class present: the union of its instances, 0/1.
            'objects': tfds.features.Sequence({
                'label': tfds.features.ClassLabel(names=COCO_CLASSES),
                'mask': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            }),
        }),
        homepage='https://cocodataset.org/',
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    paths = {name: sources.archive_or_download(dl_manager, name, url)
             for name, url in SEGMENTATION_ARCHIVES.items()}
    instances = None
    for member, f in dl_manager.iter_archive(paths['annotations_trainval2014.zip']):
      if member.replace(os.sep, '/').endswith(INSTANCES_MEMBER):
        instances = json.load(f)
        break
    if instances is None:
      raise ValueError(f'{paths["annotations_trainval2014.zip"]} holds no {INSTANCES_MEMBER}.')
    check_categories(instances)
    images = select_images(instances, self.builder_config.num_images, self.builder_config.seed)
    return {'test': self._generate_examples(dl_manager.iter_archive(paths['val2014.zip']),
                                            images, instances['annotations'])}

  def _generate_examples(self, archive, images, annotations):
    wanted = {image['file_name']: image for image in images}
    by_image: Dict[int, List[Dict]] = {}
    for annotation in annotations:
      by_image.setdefault(annotation['image_id'], []).append(annotation)
    for member, f in archive:
      image = wanted.get(os.path.basename(member))
      if image is None:
        continue
      masks = class_masks(by_image[image['id']], image['height'], image['width'])
      yield image['file_name'], {
          'image': io.BytesIO(f.read()),
          'image/filename': image['file_name'],
          'image/id': image['id'],
          'objects': [{'label': index, 'mask': masks[index][..., None]}
                      for index in sorted(masks)],
      }


# ------------------------------------------------------------------------ pipeline adapters


def _coco_config(data_config) -> ml_collections.ConfigDict:
  return data_config.get('coco', None) or default_coco_config()


def missing_tfds(data_config) -> List[str]:
  problem = sources.missing_archives_message(
      'MS COCO 2014 (TFDS coco/2014 needs every archive below)', data_config, TFDS_ARCHIVES,
      prepared_name='coco/2014/1.1.0')
  return [problem] if problem else []


def missing_segmentation(data_config) -> List[str]:
  problem = sources.missing_archives_message(
      'MS COCO 2014 evaluation masks', data_config, SEGMENTATION_ARCHIVES,
      prepared_name='coco2014_segmentation/...')
  return [problem] if problem else []


def make_coco_builder(data_config) -> tfds.core.DatasetBuilder:
  return tfds.builder('coco/2014', data_dir=data_config.get('data_dir', None))


def make_segmentation_builder(data_config) -> tfds.core.DatasetBuilder:
  coco = _coco_config(data_config)
  return Coco2014Segmentation(
      config=CocoSegmentationConfig.make(int(coco.num_eval_images), int(coco.eval_seed)),
      data_dir=data_config.get('data_dir', None))


def class_names(builder) -> tuple:
  del builder
  return COCO_CLASSES


def coco_to_standard(example, num_classes: int):
  """TFDS coco/2014 example -> image and multi-hot labels (no masks)."""
  return {'image': example['image'],
          'labels': sources.multi_hot(example['objects']['label'], num_classes)}


def segmentation_to_standard(example, num_classes: int):
  """coco2014_segmentation example -> image, labels and per-class masks (H,W,C)."""
  labels = tf.cast(example['objects']['label'], tf.int32)
  masks = tf.cast(example['objects']['mask'][..., 0] > 0, tf.int32)  # (K,h,w) in {0, 1}
  # K labels and K masks in the data; random mock data draws the two lengths independently.
  count = tf.minimum(tf.shape(labels)[0], tf.shape(masks)[0])
  labels, masks = labels[:count], masks[:count]
  shape = tf.shape(masks)
  stacked = tf.tensor_scatter_nd_max(tf.zeros([num_classes, shape[1], shape[2]], tf.int32),
                                     labels[:, None], masks)
  return {'image': example['image'], 'labels': sources.multi_hot(labels, num_classes),
          'class_masks': tf.cast(tf.transpose(stacked, (1, 2, 0)), tf.uint8)}


def coco_splits(data_config) -> Dict[str, registry.SplitSource]:
  n = int(_coco_config(data_config).num_validation)
  return {'train': registry.SplitSource(f'train[:-{n}]'),
          'validation': registry.SplitSource(f'train[-{n}:]'),
          'test': registry.SplitSource('test', dataset='coco2014_segmentation')}


registry.register_dataset('coco2014', registry.DatasetAdapter(
    make_builder=make_coco_builder, class_names=class_names, to_standard=coco_to_standard,
    multilabel=True, splits=coco_splits, missing=missing_tfds,
    download_config=sources.download_config))
registry.register_dataset('coco2014_segmentation', registry.DatasetAdapter(
    make_builder=make_segmentation_builder, class_names=class_names,
    to_standard=segmentation_to_standard, multilabel=True, missing=missing_segmentation,
    download_config=sources.download_config))
