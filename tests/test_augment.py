"""Object masking, the classifier's augmentation (wysiwyc/data/augment.py)."""

import jax
import numpy as np

from wysiwyc.data import augment


def batch_with_known_objects(batch_size=64, size=16):
  """Images of ones with three disjoint square objects of classes 0, 2, 3 (class 1 absent)."""
  class_masks = np.zeros((batch_size, size, size, 4), np.float32)
  class_masks[:, 1:5, 1:5, 0] = 1
  class_masks[:, 9:14, 2:6, 2] = 1
  class_masks[:, 3:7, 10:15, 3] = 1
  labels = np.tile(np.array([1, 0, 1, 1], np.float32), (batch_size, 1))
  images = np.random.default_rng(0).uniform(0.5, 1.5, (batch_size, size, size, 3))
  return images.astype(np.float32), labels, class_masks


def test_masked_objects_lose_their_labels_and_kept_ones_stay_intact():
  images, labels, class_masks = batch_with_known_objects()
  out_images, out_labels = jax.jit(augment.mask_objects, static_argnums=(4, 5))(
      jax.random.key(3), images, labels, class_masks, 1.0, 0)
  out_images, out_labels = np.asarray(out_images), np.asarray(out_labels)
  assert np.all(out_labels <= labels)
  unchanged, zeroed = out_images == images, out_images == 0
  assert np.all(unchanged | zeroed)
  background = class_masks.max(-1) == 0
  modes = set()
  for image_unchanged, image_zeroed, label, masks, bg in zip(
      unchanged.all(-1), zeroed.all(-1), out_labels, class_masks > 0, background):
    for c in (0, 2, 3):
      expected = image_unchanged if label[c] else image_zeroed
      assert expected[masks[..., c]].all(), (c, label)
    if image_zeroed[bg].all():
      modes.add('keep')
    else:
      assert image_unchanged[bg].all()  # drop: the background stays
      modes.add('drop')
  assert modes == {'keep', 'drop'}
  assert 0 < out_labels.sum() < labels.sum()


def test_margin_grows_the_masked_region_and_probability_zero_is_the_identity():
  images, labels, class_masks = batch_with_known_objects()
  same_images, same_labels = augment.mask_objects(jax.random.key(0), images, labels,
                                                  class_masks, 0.0, 3)
  np.testing.assert_array_equal(same_images, images)
  np.testing.assert_array_equal(same_labels, labels)
  grown = np.asarray(augment.dilate(class_masks[..., 0], 2))
  assert grown.sum() == 64 * 7 * 7  # rows/cols 1..4 grown by 2 px: -1..6, clipped to 0..6
  masked = [np.asarray(augment.mask_objects(jax.random.key(s), images, labels, class_masks,
                                            1.0, 3)[0] == 0).sum() for s in range(2)]
  exact = [np.asarray(augment.mask_objects(jax.random.key(s), images, labels, class_masks,
                                           1.0, 0)[0] == 0).sum() for s in range(2)]
  assert masked != exact  # the same draws with margins zero other pixels
  again = augment.mask_objects(jax.random.key(1), images, labels, class_masks, 1.0, 3)
  np.testing.assert_array_equal(np.asarray(again[0] == 0).sum(), masked[1])
