"""Your own labelled image folder as a data set: 'folder', under `data.folder.root` (DIR).

Two layouts:

  class per subfolder (single label)
    DIR/{train,validation,test}/<class name>/<image>    class names: the subfolders' names,
                                                        sorted; images: PIL's extensions
  manifest (multi-label, optional masks)
    DIR/classes.txt                     one class name a line; line i (from 0) is class i
    DIR/{train,validation,test}.csv     header image,labels[,mask]
      image   path relative to DIR (any format PIL reads)
      labels  class names joined by '|' (one name for single-label data; empty: no class)
      mask    optional: PNG of the image's size, pixel = class index + 1, 0 = background,
              255 = ignore (VOC's SegmentationClass convention)

train is required; without a validation split, `validation_fraction` of train (at least one
image) becomes the validation split, chosen by a hash of the image paths (the same every run);
without a test split there is no evaluation stage. Single label (softmax cross-entropy) when every
image of every split has exactly one label, multi-label (sigmoid) otherwise. As in VOC, class c's
mask is the pixels of value c+1 and the merged ground truth every non-zero pixel (255 included).

TFDS's `ImageFolder` reads the files at every epoch, knows no masks and cannot cut a validation
split, so one builder of ours, `FolderDataset`, serves both layouts: it decodes every image once
into `data_dir/folder_dataset/<fingerprint>/`, where the fingerprint hashes the folder's listing
(path, size and modification time of every file) and `validation_fraction`: a changed folder is
prepared anew, never served stale. Before anything is written, every file is read and checked;
bad input (also an empty class folder, a class without a training image) stops with one
`UserError` naming the file (and the line of the list that names it). Nothing is ever written into
DIR.
Longer than 400 lines because the two layouts, their checks and the builder are one contract.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Tuple

from absl import logging
import ml_collections
import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc import errors
from wysiwyc import image_files
from wysiwyc.data import registry
from wysiwyc.data import voc

SPLITS = ('train', 'validation', 'test')
IGNORE = 255
# Part of the fingerprint: bump it when the prepared records change meaning.
FORMAT_VERSION = 1


def default_folder_config() -> ml_collections.ConfigDict:
  """The `folder` field of a data config."""
  return ml_collections.ConfigDict(dict(root='', validation_fraction=0.1))


@dataclasses.dataclass(frozen=True)
class Row:
  """One image of a split: absolute paths, class indices, and where the row was read."""
  image: str
  labels: Tuple[int, ...]
  mask: Optional[str]
  where: str  # 'DIR/train.csv, line 3' or the image's path


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a folder holds, read from its lists and folders (no image decoded)."""
  root: str
  layout: str  # 'subfolders' or 'manifest'
  class_names: Tuple[str, ...]
  splits: Dict[str, Tuple[Row, ...]]
  fingerprint: str
  validation_from_train: bool

  @property
  def multilabel(self) -> bool:
    return any(len(row.labels) != 1 for rows in self.splits.values() for row in rows)

  def unmasked_splits(self) -> Tuple[str, ...]:
    return tuple(split for split, rows in self.splits.items()
                 if any(row.mask is None for row in rows))


# ------------------------------------------------------------------------------- the listing


def read_listing(data_config) -> Listing:
  """The folder of `data_config.folder` listed and its lists parsed; raises `UserError` on a
  missing root, an unknown layout, a bad list line, a missing file, an empty split or class
  folder, or a class without a training image."""
  config = data_config.get('folder', None) or default_folder_config()
  root = os.path.abspath(os.path.expanduser(config.root or ''))
  if not config.root:
    raise errors.UserError('data.folder.root is not set: give the folder of your images with '
                           '--config.data.folder.root=DIR.')
  if not os.path.isdir(root):
    raise errors.UserError(f'data.folder.root={config.root!r}: no such folder.')
  fraction = float(config.validation_fraction)
  if not 0 < fraction < 1:
    raise errors.UserError(f'data.folder.validation_fraction={fraction}: must be between 0 and '
                           '1 (exclusive).')
  fingerprint = _fingerprint(root, fraction)
  if (root, fingerprint) not in _LISTINGS:
    if os.path.isfile(os.path.join(root, 'classes.txt')):
      layout, class_names, splits = 'manifest', *_read_manifest(root)
    elif os.path.isdir(os.path.join(root, 'train')):
      layout, class_names, splits = 'subfolders', *_read_subfolders(root)
    else:
      raise errors.UserError(
          f'{root}: neither classes.txt (the manifest layout) nor a train/ folder (one '
          'subfolder per class) is there; see docs/own_data.md for the two layouts.')
    from_train = 'validation' not in splits
    listing = Listing(root, layout, tuple(class_names), _cut_validation(splits, fraction, root)
                      if from_train else splits, fingerprint, from_train)
    _check_every_class_trains(listing)
    if len(class_names) < 2 and not listing.multilabel:
      raise errors.UserError(f'{root}: one class only ({class_names[0]!r}); a single-label data '
                             'set needs two classes or more.')
    _LISTINGS[root, fingerprint] = listing
  return _LISTINGS[root, fingerprint]


_LISTINGS: Dict[Tuple[str, str], Listing] = {}


def _fingerprint(root: str, fraction: float) -> str:
  """A hash of every file's relative path, size and modification time, and the fraction."""
  digest = hashlib.sha256(f'{FORMAT_VERSION} {fraction!r}'.encode())
  for directory, folders, files in os.walk(root):
    folders.sort()
    for name in sorted(files):
      path = os.path.join(directory, name)
      stat = os.stat(path)  # (content hashes would read every file at every run)
      digest.update(f'\n{os.path.relpath(path, root)}\t{stat.st_size}\t{stat.st_mtime_ns}'
                    .encode())
  return digest.hexdigest()[:16]


def _read_manifest(root: str) -> Tuple[List[str], Dict[str, Tuple[Row, ...]]]:
  class_names = _read_classes(os.path.join(root, 'classes.txt'))
  index = {name: i for i, name in enumerate(class_names)}
  splits = {}
  for split in SPLITS:
    path = os.path.join(root, f'{split}.csv')
    if os.path.isfile(path):
      splits[split] = _read_split_csv(path, root, index)
    elif split == 'train':
      raise errors.UserError(f'{path}: no such file; the manifest layout needs a train.csv '
                             '(header image,labels[,mask]) next to classes.txt.')
  return class_names, splits


def _read_classes(path: str) -> List[str]:
  with open(path, encoding='utf-8-sig') as f:
    lines = f.read().rstrip().splitlines()
  seen = {}  # name -> line
  for number, line in enumerate(lines, start=1):
    name = line.strip()
    where = f'{path}, line {number}'
    if not name:
      raise errors.UserError(f'{where}: empty line; line i (from 0) names class i, so every '
                             'line must name a class.')
    if '|' in name:
      raise errors.UserError(f'{where}: class name {name!r} contains "|", which joins labels in '
                             'the split lists; rename the class.')
    if name in seen:
      raise errors.UserError(f'{where}: class {name!r} is already named on line {seen[name]}; '
                             'class names must be unique.')
    seen[name] = number
  if not seen:
    raise errors.UserError(f'{path}: no class names; write one class name a line.')
  return list(seen)


def _read_split_csv(path: str, root: str, index: Dict[str, int]) -> Tuple[Row, ...]:
  with open(path, encoding='utf-8-sig', newline='') as f:
    reader = csv.reader(f)
    header = [cell.strip() for cell in next(reader, [])]
    if header not in (['image', 'labels'], ['image', 'labels', 'mask']):
      raise errors.UserError(f'{path}, line 1: header {",".join(header)!r}; it must be '
                             '"image,labels" or "image,labels,mask".')
    rows = []
    for cells in reader:
      where = f'{path}, line {reader.line_num}'
      if not any(cell.strip() for cell in cells):
        continue
      if len(cells) != len(header):
        raise errors.UserError(f'{where}: {len(cells)} fields, the header has {len(header)} '
                               f'({",".join(header)}); quote fields that contain commas.')
      image, labels = cells[0].strip(), cells[1].strip()
      names = [name.strip() for name in labels.split('|') if name.strip()]
      unknown = [name for name in names if name not in index]
      if unknown:
        raise errors.UserError(f'{where}: label {unknown[0]!r} is not in '
                               f'{os.path.join(root, "classes.txt")} (classes: '
                               f'{_some(list(index))}); fix the label or add the class.')
      mask = cells[2].strip() if len(header) == 3 else None
      if mask == '':
        raise errors.UserError(f'{where}: no mask; this list has a mask column, so every image '
                               'needs its mask (or drop the column).')
      rows.append(Row(image=_existing(root, image, 'image', where),
                      labels=tuple(sorted({index[name] for name in names})),
                      mask=_existing(root, mask, 'mask', where) if mask is not None else None,
                      where=where))
  if not rows:
    raise errors.UserError(f'{path}: the {os.path.basename(path)[:-4]} split is empty (no rows '
                           'below the header); add images or delete the file.')
  return tuple(rows)


def _existing(root: str, relative: str, what: str, where: str) -> str:
  path = os.path.join(root, relative)
  if not relative or not os.path.isfile(path):
    raise errors.UserError(f'{where}: {what} {relative!r} not found ({path}); paths are '
                           'relative to the folder of classes.txt.')
  return path


def _read_subfolders(root: str) -> Tuple[List[str], Dict[str, Tuple[Row, ...]]]:
  extensions = {ext.lower() for ext in PIL.Image.registered_extensions()}
  found: Dict[str, List[Tuple[str, str]]] = {}
  skipped = []
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    images = found[split] = []
    empty = []
    for name in sorted(os.listdir(split_dir)):
      class_dir = os.path.join(split_dir, name)
      if not os.path.isdir(class_dir):
        if not name.startswith('.'):
          raise errors.UserError(f'{class_dir}: a file directly in {split}/; put each image into '
                                 'the subfolder named after its class.')
        continue
      count = len(images)  # an empty class folder stops the run below
      for directory, folders, files in os.walk(class_dir):
        folders.sort()
        for file in sorted(files):
          path = os.path.join(directory, file)
          if os.path.splitext(file)[1].lower() in extensions and not file.startswith('.'):
            images.append((name, path))
          else:
            skipped.append(path)
      empty += [class_dir] if len(images) == count else []
    if not images:
      raise errors.UserError(f'{split_dir}: the {split} split is empty (no images in its class '
                             'subfolders); add images or delete the folder.')
    if empty:
      raise errors.UserError(f'{empty[0]}: an empty class folder (no image by its extension); add '
                             f'images of the class or delete the folder ({len(empty)} such).')
  if skipped:
    logging.warning('Skipped %d files that are not images by their extension, e.g. %s.',
                    len(skipped), skipped[0])
  class_names = sorted({name for images in found.values() for name, _ in images})
  index = {name: i for i, name in enumerate(class_names)}
  splits = {split: tuple(Row(image=path, labels=(index[name],), mask=None, where=path)
                         for name, path in images) for split, images in found.items()}
  return class_names, splits


def _check_every_class_trains(listing: Listing) -> None:
  """`UserError` when a class has no image in the train split: no classifier can learn it."""
  trained = {label for row in listing.splits['train'] for label in row.labels}
  for index, name in [(i, n) for i, n in enumerate(listing.class_names) if i not in trained]:
    rows = [(split, row) for split, rows in listing.splits.items() for row in rows
            if index in row.labels]
    where = (os.path.dirname(rows[0][1].where) if listing.layout == 'subfolders' else
             f'{os.path.join(listing.root, "classes.txt")}, line {index + 1}')
    cut = (' (the validation cut took all of them)' if listing.validation_from_train
           and any(split == 'validation' for split, _ in rows) else '')
    raise errors.UserError(f'{where}: class {name!r} has no image in the train split{cut}; the '
                           'classifier cannot learn it. Add training images of it or remove it.')


def _cut_validation(splits, fraction: float, root: str) -> Dict[str, Tuple[Row, ...]]:
  """Moves `fraction` of train (at least one image), smallest path hashes first, to validation."""
  train = splits['train']
  count = max(1, round(fraction * len(train)))
  if count >= len(train):
    raise errors.UserError(f'{root}: the train split has {len(train)} images, too few to cut a '
                           'validation split from; add images or a validation split.')
  order = sorted(range(len(train)), key=lambda i: hashlib.sha256(
      os.path.relpath(train[i].image, root).encode()).hexdigest())
  chosen = set(order[:count])
  return {**splits, 'train': tuple(r for i, r in enumerate(train) if i not in chosen),
          'validation': tuple(r for i, r in enumerate(train) if i in chosen)}


def _some(names: List[str], most: int = 8) -> str:
  return ', '.join(names[:most]) + (', ...' if len(names) > most else '')


# ------------------------------------------------------------------------------ the contents


def read_mask(path: str, where: str, image_shape: Tuple[int, ...],
              num_classes: int) -> np.ndarray:
  """uint8 (H,W) class indices + 1 (0 background, 255 ignore), checked against the image."""
  try:
    with PIL.Image.open(path) as mask:
      values = np.asarray(mask)
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
    raise errors.UserError(f'{where}: cannot read mask {path} ({error}).') from None
  if values.ndim != 2:
    raise errors.UserError(f'{where}: mask {path} has {values.shape[-1]} channels; save it as a '
                           'single-channel PNG (mode L or P) of class index + 1 per pixel.')
  if values.shape != tuple(image_shape[:2]):
    raise errors.UserError(f'{where}: mask {path} is {values.shape[1]}x{values.shape[0]} but its '
                           f'image is {image_shape[1]}x{image_shape[0]}; masks must have the '
                           "image's size.")
  present = np.unique(values)
  bad = [str(v) for v in present[(present > num_classes) & (present != IGNORE)]]
  if bad:
    raise errors.UserError(f'{where}: mask {path} has pixel values {_some(bad)}; with '
                           f'{num_classes} classes a pixel is 0 (background), 1..{num_classes} '
                           f'(class index + 1) or {IGNORE} (ignore).')
  return values.astype(np.uint8)


def check_contents(listing: Listing) -> None:
  """Reads every image and mask (once a folder version); `UserError` at the first bad one."""
  if (listing.root, listing.fingerprint) in _CHECKED:
    return
  for rows in listing.splits.values():
    for row in rows:
      image = image_files.read_rgb(row.image, row.where)
      if row.mask is not None:
        read_mask(row.mask, row.where, image.shape, len(listing.class_names))
  _CHECKED.add((listing.root, listing.fingerprint))


_CHECKED = set()


# ---------------------------------------------------------------------------- TFDS builder


class FolderDataset(tfds.core.GeneratorBasedBuilder):
  """A user's image folder (module docstring), one builder config per folder fingerprint."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, listing: Listing, **kwargs):
    self.listing = listing
    super().__init__(config=tfds.core.BuilderConfig(name=listing.fingerprint), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images of {self.listing.root} ({self.listing.layout} layout).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'mask': tfds.features.Image(shape=(None, None, 1)),  # zeros without a mask
            'labels': tfds.features.Sequence(
                tfds.features.ClassLabel(names=list(self.listing.class_names))),
            'image/filename': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(
            root=self.listing.root, multilabel=self.listing.multilabel,
            unmasked_splits=list(self.listing.unmasked_splits()),
            validation_from_train=self.listing.validation_from_train))

  def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
    return {split: self._generate_examples(rows) for split, rows in self.listing.splits.items()}

  def _generate_examples(self, rows):
    num_classes = len(self.listing.class_names)
    for key, row in enumerate(rows):
      image = image_files.read_rgb(row.image, row.where)
      mask = (read_mask(row.mask, row.where, image.shape, num_classes) if row.mask
              else np.zeros(image.shape[:2], np.uint8))
      yield key, {'image': image, 'mask': mask[..., None], 'labels': list(row.labels),
                  'image/filename': os.path.relpath(row.image, self.listing.root)}


# ------------------------------------------------------------------------------- the adapter


def make_builder(data_config) -> FolderDataset:
  return FolderDataset(read_listing(data_config), data_dir=data_config.get('data_dir', None))


def missing(data_config) -> List[str]:
  """Nothing can be missing once the listing is read; the folder's contents are checked here,
  before anything is prepared (raises `UserError` at the first bad file)."""
  check_contents(read_listing(data_config))
  return []


def to_standard(example: Dict[str, tf.Tensor], num_classes: int) -> Dict[str, tf.Tensor]:
  """Folder example -> image, multi-hot labels, per-class masks and the foreground, read from
  the mask as VOC's segmentations are (zeros without a mask)."""
  return voc.segmentation_to_standard(
      {'image': example['image'], 'labels': example['labels'], 'segmentation': example['mask']},
      num_classes)


registry.register_dataset('folder', registry.DatasetAdapter(
    make_builder=make_builder, class_names=lambda builder: builder.listing.class_names,
    to_standard=to_standard, multilabel=lambda builder: builder.listing.multilabel,
    unmasked_splits=lambda builder: builder.listing.unmasked_splits(), missing=missing))
