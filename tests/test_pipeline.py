"""Tests of wysiwyc.data.pipeline on a tiny synthetic data set (32x32, 20/10/8 examples)."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc.data import pipeline
from wysiwyc.data import synthetic

NUM_CLASSES = 6


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  config = synthetic.default_data_config()
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.image_size = 32
  config.shuffle_buffer = 100
  config.synthetic.update(image_size=32, num_train=20, num_validation=10, num_test=8, seed=1)
  pipeline.prepare(config)
  return config


def variant(config, **overrides):
  config = config.copy_and_resolve_references()
  config.update(overrides)
  return config


def batches(config, split, batch_size, **kwargs):
  kwargs.setdefault('seed', 0)
  return list(pipeline.as_numpy(pipeline.make_dataset(config, split, batch_size, **kwargs)))


def stack(batch_list, key):
  return np.concatenate([b[key] for b in batch_list])


def fingerprints(images):
  """One id per image; denormalized so that augmentation-free pipelines agree bytewise."""
  return [hashlib.sha1(image.tobytes()).hexdigest() for image in pipeline.denormalize(images)]


def raw_examples(config, split):
  builder = synthetic.make_builder(config)
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


# ------------------------------------------------------------------------------ contract


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices('GPU') == []


def test_prepare_returns_spec_and_reuses_the_prepared_files(data_config, monkeypatch):
  def fail(*args):
    raise AssertionError(f'regenerated {args}')

  monkeypatch.setattr(synthetic, 'generate_example', fail)
  monkeypatch.setattr(pipeline, '_BUILDERS', {})  # a fresh process: only the files remain
  spec = pipeline.prepare(data_config)
  assert spec == pipeline.DataSpec(
      name='synthetic', class_names=synthetic.SHAPE_NAMES[:NUM_CLASSES], image_size=32,
      multilabel=True, num_examples={'train': 20, 'validation': 10, 'test': 8})


def test_unknown_name_lists_the_known_ones(data_config):
  with pytest.raises(ValueError, match='synthetic'):
    pipeline.prepare(variant(data_config, name='imagenet21k'))
  with pytest.raises(ValueError, match='synthetic'):
    pipeline.make_dataset(variant(data_config, name='voc2099'), 'train', 4, training=True, seed=0)


def test_training_batch_shapes_and_dtypes(data_config):
  out = batches(data_config, 'train', 4, training=True)
  assert len(out) == 5
  expected = {'image': ((4, 32, 32, 3), np.float32), 'labels': ((4, NUM_CLASSES), np.float32),
              'class_masks': ((4, 32, 32, NUM_CLASSES), np.float32),
              'foreground': ((4, 32, 32), np.float32), 'valid': ((4,), np.bool_)}
  for batch in out:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert batch['valid'].all()


def test_evaluation_matches_the_stored_examples(data_config):
  """Normalization round-trips, and masks/labels equal a NumPy derivation from the label map."""
  out = batches(data_config, 'test', 3, training=False)
  valid = stack(out, 'valid')
  assert valid.tolist() == [True] * 8 + [False]
  raw = raw_examples(data_config, 'test')
  images = stack(out, 'image')[valid]
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1.2)  # roughly centred
  restored = pipeline.denormalize(images)
  assert restored.dtype == np.uint8
  for i, example in enumerate(raw):
    assert np.abs(restored[i].astype(int) - example['image'].astype(int)).max() <= 1
    seg = example['segmentation'][..., 0]
    expected_masks = np.stack([seg == c + 1 for c in range(NUM_CLASSES)], -1)
    np.testing.assert_array_equal(stack(out, 'class_masks')[i], expected_masks)
    np.testing.assert_array_equal(stack(out, 'foreground')[i], seg > 0)
    np.testing.assert_array_equal(stack(out, 'labels')[i], example['labels'])


def test_masks_are_disjoint_and_match_labels(data_config):
  for batch in batches(data_config, 'train', 4, training=True, epoch=1):
    masks, foreground, labels = batch['class_masks'], batch['foreground'], batch['labels']
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert masks.sum(-1).max() <= 1                              # disjoint
    np.testing.assert_array_equal(masks.max(-1), foreground)      # union is the foreground
    np.testing.assert_array_equal(masks.max(axis=(1, 2)), labels)  # label iff mask non-empty
    assert foreground.any(axis=(1, 2)).all()


def test_denormalize_inverts_normalization_exactly():
  pixels = np.arange(256 * 3, dtype=np.uint8).reshape(1, 16, 16, 3)
  normalized = ((pixels / 255.0 - np.asarray(pipeline.IMAGENET_MEAN))
                / np.asarray(pipeline.IMAGENET_STD)).astype(np.float32)
  np.testing.assert_array_equal(pipeline.denormalize(normalized), pixels)
  assert pipeline.denormalize(np.full((2, 2, 3), 100.0)).max() == 255  # clipped, no wrap


def test_resize_to_another_image_size(data_config):
  out = batches(variant(data_config, image_size=20), 'validation', 5, training=False)
  batch = out[0]
  assert batch['image'].shape == (5, 20, 20, 3)
  assert batch['class_masks'].shape == (5, 20, 20, NUM_CLASSES)
  assert set(np.unique(batch['class_masks'])) <= {0.0, 1.0}
  assert batch['class_masks'].sum(-1).max() <= 1
  np.testing.assert_array_equal(batch['class_masks'].max(-1), batch['foreground'])


# -------------------------------------------------------------------------------- padding


@pytest.mark.parametrize('batch_size,expected', [(4, [4, 4, 2]), (5, [5, 5]), (16, [10])])
def test_evaluation_pads_the_last_batch(data_config, batch_size, expected):
  out = batches(data_config, 'validation', batch_size, training=False)
  assert [b['valid'].sum() for b in out] == expected
  assert all(b['image'].shape[0] == batch_size for b in out)
  last = out[-1]
  padded = ~last['valid']
  for key in ('image', 'labels', 'class_masks', 'foreground'):
    assert not last[key][padded].any(), key
  # Fixed order: a second pass gives the same batches.
  again = batches(data_config, 'validation', batch_size, training=False, seed=5)
  np.testing.assert_array_equal(stack(out, 'image'), stack(again, 'image'))


def assemble(config, split, batch_size, process_count, **kwargs):
  """The global batches as `process_count` processes make them: each process's block of every
  global batch, concatenated in process order. Every process yields as many batches."""
  parts = [batches(config, split, batch_size, process_index=index, process_count=process_count,
                   **kwargs) for index in range(process_count)]
  assert len({len(part) for part in parts}) == 1
  return [{key: np.concatenate([part[i][key] for part in parts]) for key in parts[0][i]}
          for i in range(len(parts[0]))]


def assert_same_batches(actual, expected):
  assert len(actual) == len(expected)
  for a, b in zip(actual, expected):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize('process_count,batch_size,max_examples', [
    (2, 4, 0), (3, 6, 0), (2, 4, 7), (4, 4, 3)])
def test_evaluation_batches_do_not_depend_on_the_number_of_processes(
    data_config, process_count, batch_size, max_examples):
  expected = batches(data_config, 'validation', batch_size, training=False,
                     max_examples=max_examples)
  assert stack(expected, 'valid').sum() == (max_examples or 10)
  assert_same_batches(assemble(data_config, 'validation', batch_size, process_count,
                               training=False, max_examples=max_examples), expected)


def test_max_examples_keeps_the_first_examples_of_the_split(data_config):
  everything = batches(data_config, 'validation', 10, training=False)[0]
  first = batches(data_config, 'validation', 4, training=False, max_examples=7)
  assert [b['valid'].sum() for b in first] == [4, 3]
  np.testing.assert_array_equal(stack(first, 'image')[:7], everything['image'][:7])


@pytest.mark.parametrize('process_count', [2, 4])
def test_training_batches_do_not_depend_on_the_number_of_processes(data_config, process_count):
  """The same examples, order and augmentation; also when resuming mid-epoch."""
  augmented = variant(data_config, flip=True, color_jitter=0.4)
  for skip_batches in (0, 3):
    kwargs = dict(training=True, seed=3, epoch=1, skip_batches=skip_batches)
    expected = batches(augmented, 'train', 4, **kwargs)
    assert len(expected) == 5 - skip_batches  # 20 examples: 5 batches of 4
    assert_same_batches(assemble(augmented, 'train', 4, process_count, **kwargs), expected)


def test_batch_that_does_not_divide_over_processes_is_refused(data_config):
  with pytest.raises(ValueError, match='dividing over process_count'):
    pipeline.make_dataset(data_config, 'train', 6, training=True, seed=0, process_count=4)


# ---------------------------------------------------------------------- shuffling, resuming


def test_training_epoch_is_a_deterministic_permutation(data_config):
  run = lambda **kw: fingerprints(stack(batches(data_config, 'train', 4, training=True, **kw),
                                        'image'))
  epoch0 = run(epoch=0)
  assert run(epoch=0) == epoch0                             # same (seed, epoch): same order
  everything = fingerprints(stack(batches(data_config, 'train', 20, training=False), 'image'))
  assert sorted(epoch0) == sorted(everything)                # one epoch: each example once
  assert run(epoch=1) != epoch0                              # another epoch: another order
  assert sorted(run(epoch=1)) == sorted(everything)
  assert run(epoch=0, seed=1) != epoch0                      # another seed: another order


def test_training_drops_the_remainder(data_config):
  out = batches(data_config, 'train', 6, training=True)
  assert len(out) == 3 and all(b['image'].shape[0] == 6 for b in out)


def test_fewer_examples_than_a_batch_is_an_error(data_config):
  with pytest.raises(ValueError, match='fewer than one batch'):
    pipeline.make_dataset(data_config, 'train', 32, training=True, seed=0)


def test_skip_batches_resumes_exactly(data_config):
  augmented = variant(data_config, flip=True, color_jitter=0.4)
  full = batches(augmented, 'train', 4, training=True, seed=2, epoch=3)
  resumed = batches(augmented, 'train', 4, training=True, seed=2, epoch=3, skip_batches=2)
  assert len(resumed) == len(full) - 2
  for a, b in zip(full[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --------------------------------------------------------------------------- augmentation


def test_flip_flips_image_and_masks_together(data_config):
  plain = batches(data_config, 'train', 20, training=True, epoch=2)[0]
  flipped = batches(variant(data_config, flip=True), 'train', 20, training=True, epoch=2)[0]
  np.testing.assert_array_equal(plain['labels'], flipped['labels'])  # same order
  was_flipped = []
  for i in range(20):
    same = np.array_equal(flipped['image'][i], plain['image'][i])
    mirrored = np.array_equal(flipped['image'][i], plain['image'][i][:, ::-1])
    assert same != mirrored
    reference = plain if same else {k: v[:, :, ::-1] for k, v in plain.items()
                                    if k in ('class_masks', 'foreground')}
    np.testing.assert_array_equal(flipped['class_masks'][i], reference['class_masks'][i])
    np.testing.assert_array_equal(flipped['foreground'][i], reference['foreground'][i])
    was_flipped.append(mirrored)
  assert 0 < sum(was_flipped) < 20


def test_random_shift_moves_image_and_masks_together_within_the_bound(data_config):
  plain = batches(data_config, 'train', 20, training=True, epoch=2)[0]
  shifted = batches(variant(data_config, random_shift=3), 'train', 20, training=True, epoch=2)[0]
  again = batches(variant(data_config, random_shift=3), 'train', 20, training=True, epoch=2)[0]
  np.testing.assert_array_equal(shifted['image'], again['image'])
  np.testing.assert_array_equal(plain['labels'], shifted['labels'])  # same order
  size = plain['image'].shape[1]
  moves = []
  for i in range(20):
    found = None
    for dy in range(-3, 4):
      for dx in range(-3, 4):
        inner = (slice(3, size - 3), slice(3, size - 3))
        moved = (slice(3 + dy, size - 3 + dy), slice(3 + dx, size - 3 + dx))
        if (np.array_equal(shifted['image'][i][inner], plain['image'][i][moved]) and
            np.array_equal(shifted['class_masks'][i][inner], plain['class_masks'][i][moved])):
          found = (dy, dx)
    assert found is not None, f'example {i}: not a shift of at most 3 px of image and masks'
    moves.append(found)
  assert len(set(moves)) > 3


def test_color_jitter_changes_images_only_and_is_deterministic(data_config):
  config = variant(data_config, color_jitter=0.5)
  plain = batches(data_config, 'train', 20, training=True)[0]
  jittered = batches(config, 'train', 20, training=True)[0]
  again = batches(config, 'train', 20, training=True)[0]
  np.testing.assert_array_equal(jittered['image'], again['image'])
  np.testing.assert_array_equal(jittered['class_masks'], plain['class_masks'])
  per_image_change = np.abs(jittered['image'] - plain['image']).mean(axis=(1, 2, 3))
  assert (per_image_change > 0.01).mean() > 0.8
  pixels = pipeline.denormalize(jittered['image']).astype(np.float32) / 255
  assert pixels.min() >= 0 and pixels.max() <= 1
  other_epoch = batches(config, 'train', 20, training=True, epoch=1)[0]
  assert not np.array_equal(np.sort(fingerprints(other_epoch['image'])),
                            np.sort(fingerprints(jittered['image'])))
