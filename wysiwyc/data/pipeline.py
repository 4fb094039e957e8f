"""Input pipeline: TFDS -> tf.data -> numpy dicts for JAX, the same for every data set.

    spec = pipeline.prepare(config.data)            # builds the TFDS data once, returns a DataSpec
    ds = pipeline.make_dataset(config.data, 'train', 32, training=True, seed=0, epoch=3)
    for batch in pipeline.as_numpy(ds): ...

Batches are dicts of numpy arrays, NHWC with the class axis last:
  image        float32 (B,H,W,3)  ImageNet-normalized: (x/255 - IMAGENET_MEAN) / IMAGENET_STD
  labels       float32 (B,C)      multi-hot (one-hot for single-label data sets)
  class_masks  float32 (B,H,W,C)  ground-truth mask of each class, in {0,1}
  foreground   float32 (B,H,W)    union of the objects, in {0,1}
  valid        bool    (B,)       False on rows that only pad the last evaluation batch

Training datasets are ONE epoch, shuffled deterministically from (seed, epoch), augmented
deterministically from the same pair and the example's position in the epoch, cut into full
batches and then `.skip(skip_batches)`: restarting with the same (seed, epoch, skip_batches)
continues an interrupted epoch exactly. Evaluation datasets are in a fixed order without
augmentation, optionally cut to their first `max_examples`; the last batch is padded with
`valid=False` rows.

`batch_size` is the GLOBAL batch. With several processes, every process reads the same stream
of undecoded records and keeps block `process_index` of `process_count` equal contiguous blocks
of each global batch: it decodes and augments only its own rows, and the augmentation of a row
depends on its global position. So the global batches (which examples, in which order, which
augmentation) depend on the seed and the global batch size only, not on the number of processes,
and every process yields the same number of batches. The price: each process reads (not
decodes) every record of the split.

`data_config` (an `ml_collections.ConfigDict`) fields:
  name            data set name, one of `wysiwyc.data.catalog.known_datasets()`:
                  'synthetic', 'voc2007', 'coco2014', 'cub2011' (and the evaluation sets
                  'voc2007_segmentation', 'coco2014_segmentation')
  data_dir        TFDS data directory (None: the TFDS default, ~/tensorflow_datasets)
  manual_dir      real data sets: folder of archives placed by hand (None:
                  <data_dir>/downloads/manual); see `wysiwyc.data.sources`
  image_size      side of the square model input; images are resized to it (bilinear,
                  antialiased; masks nearest) unless they already have that size
  flip            bool: random horizontal flips when training (masks flipped with the image)
  color_jitter    float strength s of brightness/contrast/saturation jitter when training:
                  each factor uniform in [max(0, 1-s), 1+s]; 0 = off
  random_shift    int: when training, image and masks moved together by up to this many
                  pixels each way (borders mirrored); 0 = off
  shuffle_buffer  examples in the tf.data shuffle buffer (>= split size: a full shuffle)
  synthetic       ConfigDict of the synthetic data set's parameters
                  (`wysiwyc.data.synthetic.default_synthetic_config()`); other data sets
                  read their own sub-config.

A data set plugs in through a `DatasetAdapter` (`wysiwyc.data.registry`): how to make its
(unprepared) TFDS builder from `data_config`, its class names, and how to map one raw TFDS example
to {'image' uint8 (H,W,3), 'labels' multi-hot (C,), optional 'class_masks' (H,W,C),
optional 'foreground' (H,W)}; `wysiwyc.data.catalog` names every data set. The standard
splits 'train', 'validation', 'test' may be TFDS split expressions of the data set's builder or
splits of another registered data set (`SplitSource`; VOC and COCO are evaluated on separate
segmentation sets). Data that is not prepared and cannot be downloaded is reported by
`missing_data` (and by `prepare`, as a `UserError`) before anything is written. TensorFlow is
kept off every GPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterator, List, Tuple

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc import errors
from wysiwyc.data import catalog
from wysiwyc.data import registry
from wysiwyc.data import sources


def _hide_gpus_from_tensorflow():
  """tf.data only needs the CPU; leave every accelerator's memory to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as error:  # TensorFlow's runtime was initialized before this import
    logging.warning('Could not hide GPUs from TensorFlow: %s', error)


_hide_gpus_from_tensorflow()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the model and the tools need to know about a prepared data set."""
  name: str
  class_names: Tuple[str, ...]
  image_size: int
  multilabel: bool
  num_examples: Dict[str, int]
  # Standard splits whose examples have no ground-truth masks: no mask metrics on them.
  unmasked_splits: Tuple[str, ...] = ()


# ----------------------------------------------------------------------------------- public


def prepare(data_config: ml_collections.ConfigDict) -> DataSpec:
  """Builds the TFDS data set (every source of its splits) into `data_config.data_dir` unless
  it is there; its spec. Raises `UserError` naming what to fetch when data is missing and
  cannot be downloaded, before anything is written."""
  problems = missing_data(data_config)
  if problems:
    raise errors.UserError(sources.format_missing(problems))
  adapter = catalog.get_adapter(data_config.name)
  builder = _prepared_builder(adapter, data_config)
  if adapter.splits is None:
    num_examples = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
  else:
    num_examples = {}
    for split in adapter.splits(data_config):
      source_builder, tfds_split, _ = _split_source(data_config, split)
      num_examples[split] = int(source_builder.info.splits[tfds_split].num_examples)
  return DataSpec(
      name=data_config.name,
      class_names=tuple(adapter.class_names(builder)),
      image_size=int(data_config.image_size),
      multilabel=bool(adapter.multilabel(builder) if callable(adapter.multilabel)
                      else adapter.multilabel),
      num_examples=num_examples,
      unmasked_splits=tuple(adapter.unmasked_splits(builder) if adapter.unmasked_splits
                            else ()))


def missing_data(data_config: ml_collections.ConfigDict) -> List[str]:
  """What stops the data of `data_config` (every split's source) from being prepared here:
  one message per problem, empty when everything is prepared or can be downloaded. Writes
  nothing."""
  adapter = catalog.get_adapter(data_config.name)
  names = [data_config.name] + [source.dataset for source in
                                (adapter.splits(data_config) if adapter.splits else {}).values()
                                if source.dataset]
  problems = []
  for name in dict.fromkeys(names):
    source_adapter = catalog.get_adapter(name)
    if source_adapter.missing and not _builder(source_adapter, data_config).is_prepared():
      problems.extend(source_adapter.missing(data_config))
  return sources.dedupe(problems)


def make_dataset(data_config: ml_collections.ConfigDict, split: str, batch_size: int, *,
                 training: bool, seed: int, epoch: int = 0, skip_batches: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 max_examples: int = 0) -> tf.data.Dataset:
  """This process's block of each global batch of `batch_size` examples of `split`;
  `max_examples` (evaluation only, 0 = all) keeps the split's first examples. See the module
  docstring for the contract."""
  if (batch_size < 1 or batch_size % process_count or skip_batches < 0 or max_examples < 0
      or not 0 <= process_index < process_count or (training and max_examples)):
    raise ValueError(f'Need batch_size >= 1 dividing over process_count, skip_batches >= 0, '
                     f'0 <= process_index < process_count, max_examples >= 0 (0 in training); '
                     f'got {batch_size}, {skip_batches}, {process_index}, {process_count}, '
                     f'{max_examples}.')
  adapter = catalog.get_adapter(data_config.name)
  num_classes = len(adapter.class_names(_prepared_builder(adapter, data_config)))
  builder, split, source_adapter = _split_source(data_config, split)
  standardize = lambda example: _standardize(example, source_adapter, num_classes,
                                             int(data_config.image_size))
  rows = _Rows(batch_size, process_index, process_count)
  if training:
    return _training_dataset(builder, data_config, standardize, split, rows, seed, epoch,
                             skip_batches)
  return _evaluation_dataset(builder, standardize, split, rows, max_examples)


def as_numpy(dataset: tf.data.Dataset) -> Iterator[Dict[str, np.ndarray]]:
  """Iterates over `dataset` as dicts of numpy arrays."""
  return iter(tfds.as_numpy(dataset))


def denormalize(images) -> np.ndarray:
  """ImageNet-normalized float images (..., H, W, 3) -> uint8 RGB."""
  images = np.asarray(images, np.float32)
  if images.ndim < 3 or images.shape[-1] != 3:
    raise ValueError(f'Expected images of shape (..., H, W, 3); got {images.shape}.')
  pixels = (images * np.asarray(IMAGENET_STD, np.float32)
            + np.asarray(IMAGENET_MEAN, np.float32)) * 255.0
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- internals


_BUILDERS: Dict[Tuple[int, str], tfds.core.DatasetBuilder] = {}


def _builder(adapter: registry.DatasetAdapter, data_config) -> tfds.core.DatasetBuilder:
  """The adapter's builder, not necessarily prepared; kept per configuration."""
  key = (id(adapter), data_config.to_json(sort_keys=True))
  builder = _BUILDERS.get(key)
  if builder is None:
    builder = _BUILDERS[key] = adapter.make_builder(data_config)
  return builder


def _prepared_builder(adapter: registry.DatasetAdapter, data_config) -> tfds.core.DatasetBuilder:
  """The adapter's builder, prepared (every epoch asks for it)."""
  builder = _builder(adapter, data_config)
  if not builder.is_prepared():
    problems = adapter.missing(data_config) if adapter.missing else []
    if problems:
      raise errors.UserError(sources.format_missing(problems))
    builder.download_and_prepare(
        download_config=adapter.download_config(data_config) if adapter.download_config
        else None)
  return builder


def _split_source(data_config, split: str) -> Tuple[tfds.core.DatasetBuilder, str,
                                                     registry.DatasetAdapter]:
  """(prepared builder, TFDS split expression, adapter) that standard `split` is read from;
  a split the adapter does not map is read from the data set's own builder."""
  adapter = catalog.get_adapter(data_config.name)
  mapping = adapter.splits(data_config) if adapter.splits else {}
  source = mapping.get(split, registry.SplitSource(split))
  source_adapter = catalog.get_adapter(source.dataset) if source.dataset else adapter
  return _prepared_builder(source_adapter, data_config), source.split, source_adapter


def _epoch_key(seed: int, epoch: int) -> int:
  """A non-negative int32 that mixes (seed, epoch) well; seeds shuffling and augmentation."""
  state = np.random.SeedSequence([seed % 2**32, epoch % 2**32]).generate_state(1)[0]
  return int(state) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Block `index` of `count` equal contiguous blocks of every global batch of `batch_size`."""
  batch_size: int
  index: int
  count: int

  @property
  def local(self) -> int:
    return self.batch_size // self.count

  def owns(self, position: tf.Tensor) -> tf.Tensor:
    """Whether the example at `position` in the stream is one of this block's rows."""
    return tf.equal(position % self.batch_size // self.local, self.index)

  def owned(self, num_examples: int) -> int:
    """How many of the first `num_examples` examples of the stream are this block's rows."""
    full, rest = divmod(num_examples, self.batch_size)
    return full * self.local + min(max(rest - self.index * self.local, 0), self.local)


class _Undecoded(tfds.decode.SkipDecoding):
  """Leaves a feature as stored, also in sequences (where SkipDecoding maps over the elements)."""

  def decode_batch_example(self, serialized_example):
    return serialized_example


def _read_undecoded(builder, split: str, rows: '_Rows',
                    **kwargs) -> Tuple[tf.data.Dataset, Callable]:
  """(the split's records parsed but not decoded, the function that decodes one): filtering
  before decoding keeps the cost of dropping other processes' rows to reading them. A single
  process keeps every row, so it reads them decoded (and `tfds.testing.mock_data`, which
  ignores `decoders`, works)."""
  if rows.count == 1:
    return builder.as_dataset(split=split, **kwargs), lambda example: example
  features = builder.info.features
  skip = tf.nest.map_structure(lambda _: _Undecoded(), features.get_serialized_info())
  return builder.as_dataset(split=split, decoders=skip, **kwargs), features.decode_example


def _resize(images: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """(H,W,K) -> (size,size,K); a no-op when the image already has that size."""
  height, width = images.shape[0], images.shape[1]
  if height == size and width == size:
    return images
  resize = lambda: tf.image.resize(images, (size, size), method=method,
                                   antialias=method == 'bilinear')
  if height is None or width is None:
    dynamic = tf.shape(images)
    same = tf.logical_and(tf.equal(dynamic[0], size), tf.equal(dynamic[1], size))
    return tf.ensure_shape(tf.cond(same, lambda: images, resize),
                           (size, size, images.shape[-1]))
  return resize()


def _standardize(example, adapter: registry.DatasetAdapter, num_classes: int, size: int):
  """Raw TFDS example -> {'image' in [0,1] (size,size,3), 'labels', 'masks' (size,size,C+1)};
  the last mask channel is the foreground."""
  standard = adapter.to_standard(example, num_classes)
  image = tf.cast(standard['image'], tf.float32) / 255.0
  labels = tf.ensure_shape(tf.cast(standard['labels'], tf.float32), (num_classes,))
  class_masks = standard.get('class_masks')
  foreground = standard.get('foreground')
  if foreground is not None:
    foreground = tf.cast(foreground, tf.float32)
  if class_masks is None:
    base = foreground if foreground is not None else tf.zeros(tf.shape(image)[:2])
    class_masks = base[..., None] * labels
  class_masks = tf.cast(class_masks, tf.float32)
  if foreground is None:
    foreground = tf.reduce_max(class_masks, axis=-1)
  masks = tf.concat([class_masks, foreground[..., None]], axis=-1)
  return {'image': tf.ensure_shape(_resize(image, size, 'bilinear'), (size, size, 3)),
          'labels': labels,
          'masks': tf.ensure_shape(_resize(masks, size, 'nearest'),
                                   (size, size, num_classes + 1))}


def _augment(example, key: tf.Tensor, flip: bool, jitter: float, shift: int):
  """Random flip, colour jitter and shift, a pure function of `key` (int64 (2,))."""
  image, masks = example['image'], example['masks']
  flip_seed, brightness_seed, contrast_seed, saturation_seed = tf.unstack(
      tf.random.experimental.stateless_split(key, 4))
  if shift > 0:  # its own seed: the other augmentations draw what they drew without it
    image, masks = _random_shift(image, masks, shift,
                                 tf.random.experimental.stateless_fold_in(key, 5))
  if flip:
    do_flip = tf.random.stateless_uniform((), flip_seed) < 0.5
    image = tf.where(do_flip, image[:, ::-1], image)
    masks = tf.where(do_flip, masks[:, ::-1], masks)
  if jitter > 0:
    factor = lambda s: tf.random.stateless_uniform((), s, max(0.0, 1.0 - jitter), 1.0 + jitter)
    image = image * factor(brightness_seed)
    gray = tf.image.rgb_to_grayscale(image)
    image = (image - tf.reduce_mean(gray)) * factor(contrast_seed) + tf.reduce_mean(gray)
    gray = tf.image.rgb_to_grayscale(image)
    image = (image - gray) * factor(saturation_seed) + gray
    image = tf.clip_by_value(image, 0.0, 1.0)
  return dict(example, image=image, masks=masks)


def _random_shift(image, masks, shift: int, seed):
  """Image and masks moved together by up to `shift` px each way (borders mirrored)."""
  height, width = image.shape[0], image.shape[1]
  offset = tf.random.stateless_uniform((2,), seed, 0, 2 * shift + 1, dtype=tf.int32)
  crop = lambda x: tf.pad(x, [[shift, shift], [shift, shift], [0, 0]], mode='SYMMETRIC')[
      offset[0]:offset[0] + height, offset[1]:offset[1] + width]
  return (tf.ensure_shape(crop(image), image.shape), tf.ensure_shape(crop(masks), masks.shape))


def _finalize(example, valid=True):
  """[0,1] image and stacked masks -> the output contract."""
  image = (example['image'] - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
  return {'image': image, 'labels': example['labels'],
          'class_masks': example['masks'][..., :-1], 'foreground': example['masks'][..., -1],
          'valid': tf.constant(valid)}


def _training_dataset(builder, data_config, standardize, split, rows: _Rows, seed, epoch,
                      skip_batches):
  num_examples = builder.info.splits[split].num_examples
  if num_examples < rows.batch_size:
    raise errors.UserError(f'Split {split!r} has {num_examples} examples, fewer than one batch '
                           f'of {rows.batch_size}.')
  key = _epoch_key(seed, epoch)
  flip = bool(data_config.get('flip', False))
  jitter = float(data_config.get('color_jitter', 0.0))
  shift = int(data_config.get('random_shift', 0))
  buffer = int(data_config.get('shuffle_buffer', 10_000))
  dataset, decode = _read_undecoded(builder, split, rows, shuffle_files=True,
                                    read_config=tfds.ReadConfig(shuffle_seed=key))
  dataset = dataset.shuffle(min(buffer, num_examples), seed=key, reshuffle_each_iteration=False)
  # Position in the epoch, the same in every process: seeds this example's augmentation.
  dataset = dataset.enumerate()
  # Full global batches only, so that every process yields as many batches. Skipping whole
  # batches' worth of examples before decoding equals skipping batches after batching.
  dataset = dataset.take(num_examples // rows.batch_size * rows.batch_size)
  dataset = dataset.skip(skip_batches * rows.batch_size)
  dataset = dataset.filter(lambda position, _: rows.owns(position))

  def process(position, example):
    augmented = _augment(standardize(decode(example)),
                         tf.stack([tf.constant(key, tf.int64), position]), flip, jitter, shift)
    return _finalize(augmented)

  dataset = dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(rows.local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _evaluation_dataset(builder, standardize, split, rows: _Rows, max_examples: int):
  num_examples = builder.info.splits[split].num_examples
  if max_examples:
    num_examples = min(num_examples, max_examples)
  # Every process yields as many batches (collectives stay in step); padding ends the last one.
  padding = math.ceil(num_examples / rows.batch_size) * rows.local - rows.owned(num_examples)
  dataset, decode = _read_undecoded(builder, split, rows, shuffle_files=False)
  dataset = dataset.take(num_examples).enumerate()
  dataset = dataset.filter(lambda position, _: rows.owns(position))
  dataset = dataset.map(lambda _, example: _finalize(standardize(decode(example))),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if padding:
    blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  dataset.element_spec)  # valid = False
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
  return dataset.batch(rows.local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

