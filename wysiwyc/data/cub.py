"""Caltech-UCSD Birds 200-2011 for the pipeline: data set 'cub2011'.

200 classes, one label per image: the classifier and the Explainer's classification loss use
softmax cross-entropy (DESIGN.md section 1). TFDS's caltech_birds2011 has a train (5994) and a
test (5794) split and a soft segmentation per image (the mean of several annotators, 0..255):
  train       'train[:-N]'   (N = data.cub.num_validation, default 600)
  validation  'train[-N:]'   (early stopping)
  test        'test'         foreground = segmentation >= 128 (most annotators), the class mask
                             of the image's label is the foreground
Class names are TFDS's `label_name` of each label (read once from the train split).

Archives: CUB_200_2011.tgz and segmentations.tgz, from the manual folder or downloaded. TFDS
decodes the segmentations with OpenCV when it prepares the data set: install
opencv-python-headless on the machine that prepares it.
"""

from __future__ import annotations

from typing import Dict, List

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc.data import registry
from wysiwyc.data import sources

NUM_CLASSES = 200
FOREGROUND_THRESHOLD = 128
ARCHIVES = {
    'CUB_200_2011.tgz':
        'https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1',
    'segmentations.tgz':
        'https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz?download=1',
}


def default_cub_config() -> ml_collections.ConfigDict:
  """The `cub` field of a data config."""
  return ml_collections.ConfigDict(dict(num_validation=600))


def missing(data_config) -> List[str]:
  problems = []
  archives = sources.missing_archives_message(
      'Caltech-UCSD Birds 200-2011', data_config, ARCHIVES,
      prepared_name='caltech_birds2011/0.2.0')
  if archives:
    problems.append(archives)
  try:
    import cv2  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    problems.append('Caltech-UCSD Birds 200-2011: TFDS needs OpenCV to prepare it (it decodes '
                    'the segmentations with cv2): pip install opencv-python-headless, or '
                    'prepare it on another machine and copy caltech_birds2011/0.2.0 into the '
                    'data directory.')
  return problems


def make_builder(data_config) -> tfds.core.DatasetBuilder:
  return tfds.builder('caltech_birds2011', data_dir=data_config.get('data_dir', None))


_CLASS_NAMES: Dict[str, tuple] = {}


def class_names(builder) -> tuple:
  """The 200 class names, from the train split's `label_name` (cached per prepared folder);
  a label never seen keeps its number."""
  key = str(builder.data_path)
  if key not in _CLASS_NAMES:
    names = [str(i) for i in range(NUM_CLASSES)]
    dataset = builder.as_dataset(split='train', decoders=tfds.decode.PartialDecoding(
        {'label': True, 'label_name': True}))  # images are neither parsed nor decoded
    for example in tfds.as_numpy(dataset):
      label, name = example['label'], example['label_name']
      if 0 <= int(label) < NUM_CLASSES:
        names[int(label)] = name.decode() if isinstance(name, bytes) else str(name)
    _CLASS_NAMES[key] = tuple(names)
  return _CLASS_NAMES[key]


def to_standard(example, num_classes: int):
  """caltech_birds2011 example -> image, one-hot label and the thresholded foreground."""
  foreground = tf.cast(example['segmentation_mask'][..., 0] >= FOREGROUND_THRESHOLD, tf.uint8)
  return {'image': example['image'], 'labels': tf.one_hot(example['label'], num_classes),
          'foreground': foreground}


def splits(data_config) -> Dict[str, registry.SplitSource]:
  cub = data_config.get('cub', None) or default_cub_config()
  n = int(cub.num_validation)
  return {'train': registry.SplitSource(f'train[:-{n}]'),
          'validation': registry.SplitSource(f'train[-{n}:]'),
          'test': registry.SplitSource('test')}


registry.register_dataset('cub2011', registry.DatasetAdapter(
    make_builder=make_builder, class_names=class_names, to_standard=to_standard,
    multilabel=False, splits=splits, missing=missing, download_config=sources.download_config))
