"""Arrays held in Python ('arrays' data set): the batches given to `wysiwyc.api.train_explainer`,
stored once in a folder and read through the same input pipeline as every other data set.

Folder `data.arrays.root` (written by `write`):
  classes.json          {'class_names': [...], 'multilabel': bool}
  <split>.npz           image uint8 (N,S,S,3), labels uint8 (N,C) multi-hot, optional
                        class_masks uint8 (N,S,S,C) in {0,1}; split in train, validation, test
The TFDS data set is prepared under `data.data_dir`, one builder config per content hash, so a
folder whose arrays change is prepared again, not served stale.
"""

import hashlib
import json
import os
from typing import Dict, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc import checkpointing
from wysiwyc import errors
from wysiwyc.data import registry

SPLITS = ('train', 'validation', 'test')


def default_arrays_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'root': ''})


def write(root: str, splits: Dict[str, Dict[str, np.ndarray]], class_names: Sequence[str],
          multilabel: bool) -> None:
  """Stores `splits` ({split: {'image', 'labels'[, 'class_masks']}}) under `root`; a split whose
  file already holds the same arrays is left untouched."""
  os.makedirs(root, exist_ok=True)
  checkpointing.write_json_atomic(os.path.join(root, 'classes.json'),
                                  {'class_names': list(class_names),
                                   'multilabel': bool(multilabel)})
  for split, arrays in splits.items():
    path = os.path.join(root, f'{split}.npz')
    if os.path.exists(path) and _same_arrays(path, arrays):
      continue
    tmp = f'{path}.tmp-{os.getpid()}.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _same_arrays(path: str, arrays: Dict[str, np.ndarray]) -> bool:
  with np.load(path) as stored:
    return set(stored.files) == set(arrays) and all(
        stored[k].shape == arrays[k].shape and np.array_equal(stored[k], arrays[k])
        for k in arrays)


def _root(data_config) -> str:
  root = (data_config.get('arrays', None) or default_arrays_config()).root
  if not root or not os.path.isfile(os.path.join(root, 'classes.json')):
    raise errors.UserError(f'data.arrays.root={root!r} holds no arrays (classes.json); it is '
                           'written by wysiwyc.api.train_explainer.')
  return os.path.abspath(root)


def _fingerprint(root: str) -> str:
  digest = hashlib.sha256()
  for name in sorted(os.listdir(root)):
    if name == 'classes.json' or (name.endswith('.npz') and name[:-4] in SPLITS):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + hashlib.sha256(f.read()).digest())
  return 'h' + digest.hexdigest()[:16]


class ArraysDataset(tfds.core.GeneratorBasedBuilder):
  """The arrays of one folder (module docstring), one builder config per content hash."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, root: str, **kwargs):
    self.root = root
    with open(os.path.join(root, 'classes.json')) as f:
      self.classes = json.load(f)
    self.present = {split: os.path.exists(os.path.join(root, f'{split}.npz')) for split in SPLITS}
    with np.load(os.path.join(root, 'train.npz')) as train:
      self.size = int(train['image'].shape[1])
    self.masked = {}
    for split in SPLITS:
      if self.present[split]:
        with np.load(os.path.join(root, f'{split}.npz')) as stored:
          self.masked[split] = 'class_masks' in stored.files
    super().__init__(config=tfds.core.BuilderConfig(name=_fingerprint(root)), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    num_classes, size = len(self.classes['class_names']), self.size
    return tfds.core.DatasetInfo(
        builder=self, description=f'Arrays of {self.root}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3)),
            'labels': tfds.features.Tensor(shape=(num_classes,), dtype=np.uint8),
            'class_masks': tfds.features.Tensor(shape=(size, size, num_classes), dtype=np.uint8,
                                                encoding='zlib')}))

  def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
    return {split: self._generate_examples(split) for split in SPLITS if self.present[split]}

  def _generate_examples(self, split):
    with np.load(os.path.join(self.root, f'{split}.npz')) as stored:
      images, labels = stored['image'], stored['labels']
      masks = stored['class_masks'] if 'class_masks' in stored.files else None
    for i in range(len(images)):
      yield i, {'image': images[i], 'labels': labels[i],
                'class_masks': masks[i] if masks is not None else
                np.zeros(images.shape[1:3] + labels.shape[1:], np.uint8)}

  def unmasked_splits(self):
    return tuple(split for split, masked in self.masked.items() if not masked)


def make_builder(data_config) -> ArraysDataset:
  return ArraysDataset(_root(data_config), data_dir=data_config.get('data_dir', None))


def to_standard(example: Dict[str, tf.Tensor], num_classes: int) -> Dict[str, tf.Tensor]:
  del num_classes
  return {'image': example['image'], 'labels': example['labels'],
          'class_masks': example['class_masks']}


registry.register_dataset('arrays', registry.DatasetAdapter(
    make_builder=make_builder, class_names=lambda builder: tuple(
        builder.classes['class_names']),
    to_standard=to_standard, multilabel=lambda builder: builder.classes['multilabel'],
    unmasked_splits=lambda builder: builder.unmasked_splits()))
