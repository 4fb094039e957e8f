"""Tests of wysiwyc.losses against slow, explicit NumPy loops."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wysiwyc import losses

B, H, W, C = 3, 8, 8, 4
TOL = dict(rtol=1e-5, atol=1e-6)
EXPLAINER_WEIGHTS = {'classification': 'lambda_c', 'entropy': 'lambda_e', 'tv': 'lambda_tv',
                     'area_class': 'lambda_ac', 'area_target': 'lambda_t',
                     'area_non_target': 'lambda_nt', 'single_class': 'lambda_single',
                     'class_overlap': 'lambda_overlap', 'pooled_class': 'lambda_pooled'}
SELF_EXPLAINER_WEIGHTS = {
    'classification_teacher': 'lambda_c', 'classification_student': 'lambda_c',
    'similarity': 'lambda_similarity', 'tv': 'lambda_tv', 'area_class': 'lambda_ac',
    'area_target': 'lambda_t', 'area_non_target': 'lambda_nt', 'coherency': 'lambda_coherency'}


# ---------------------------------------------------------------------------- NumPy references


def np_sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def np_extract_masks(seg, targets):
  b_, h_, w_, c_ = seg.shape
  target_mask, non_target_mask = np.zeros((b_, h_, w_)), np.zeros((b_, h_, w_))
  for b in range(b_):
    for i in range(h_):
      for j in range(w_):
        tgt = [seg[b, i, j, c] for c in range(c_) if targets[b, c] == 1]
        other = [seg[b, i, j, c] for c in range(c_) if targets[b, c] == 0]
        target_mask[b, i, j] = np_sigmoid(max(tgt)) if tgt else 0.0
        non_target_mask[b, i, j] = np_sigmoid(max(other)) if other else 0.0
  return target_mask, non_target_mask


def np_total_variation(mask, squared=False):
  b_, h_, w_ = mask.shape
  total = 0.0
  for b in range(b_):
    for i in range(h_):
      for j in range(w_):
        right = j + 1 if j + 1 < w_ else w_ - 2  # reflection
        down = i + 1 if i + 1 < h_ else h_ - 2
        for d in (mask[b, i, j] - mask[b, i, right], mask[b, i, j] - mask[b, down, j]):
          total += d * d if squared else abs(d)
  return total / (b_ * h_ * w_)


def np_class_mask_area_loss(seg, targets, min_area, max_area):
  b_, h_, w_, c_ = seg.shape
  n = h_ * w_
  per_image = []
  for b in range(b_):
    loss = 0.0
    for c in range(c_):
      if targets[b, c] != 1:
        continue
      values = sorted((np_sigmoid(seg[b, i, j, c]) for i in range(h_) for j in range(w_)),
                      reverse=True)
      n_min, n_max = int(n * min_area), int(n * max_area)
      terms = []
      for k, v in enumerate(values):
        t = 0.0
        if min_area > 0:
          t += max((1.0 if k < n_min else 0.0) - v, 0.0)
        if max_area < 1:
          t += max(v - (1.0 if k < n_max else 0.0), 0.0)
        terms.append(t)
      loss += sum(terms) / n
    per_image.append(loss)
  return sum(per_image) / b_


def np_bce(logits, targets):
  total = 0.0
  for b in range(logits.shape[0]):
    for c in range(logits.shape[1]):
      p = np_sigmoid(logits[b, c])
      total -= targets[b, c] * math.log(p) + (1 - targets[b, c]) * math.log(1 - p)
  return total / logits.size


def np_softmax(row):
  e = [math.exp(v - max(row)) for v in row]
  return [v / sum(e) for v in e]


def np_softmax_ce(logits, targets):
  total = 0.0
  for b in range(logits.shape[0]):
    label = int(np.argmax(targets[b]))
    total -= math.log(np_softmax(logits[b])[label])
  return total / logits.shape[0]


def np_entropy_loss(logits):
  total = 0.0
  for b in range(logits.shape[0]):
    for p in np_softmax(logits[b]):
      p = max(p, 1e-16)
      total += p * math.log(p)  # -(-p log p)
  return total / logits.size


def np_classify(images, weight, bias):
  """A fixed linear map of the mean colour: (N,H,W,3) -> (N,C)."""
  out = np.zeros((images.shape[0], weight.shape[1]))
  for n in range(images.shape[0]):
    mean_colour = [images[n, :, :, k].mean() for k in range(3)]
    for c in range(weight.shape[1]):
      out[n, c] = sum(mean_colour[k] * weight[k, c] for k in range(3)) + bias[c]
  return out


def np_segment(images, weight, bias):
  """A per-pixel linear map of the colour: (N,H,W,3) -> (N,H,W,C)."""
  n_, h_, w_, _ = images.shape
  out = np.zeros((n_, h_, w_, weight.shape[1]))
  for n in range(n_):
    for i in range(h_):
      for j in range(w_):
        for c in range(weight.shape[1]):
          out[n, i, j, c] = sum(images[n, i, j, k] * weight[k, c] for k in range(3)) + bias[c]
  return out


# ---------------------------------------------------------------------------- fixtures


def random_inputs(seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  seg = rng.normal(size=(B, H, W, C)) * scale
  images = rng.normal(size=(B, H, W, 3))
  targets = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)  # incl. edge cases
  return seg.astype(np.float32), images.astype(np.float32), targets


def linear_params(seed=1):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(3, C)).astype(np.float32), rng.normal(size=(C,)).astype(np.float32)


def jax_classify(weight, bias):
  return lambda images: images.mean(axis=(1, 2)) @ weight + bias


def jax_segment(weight, bias):
  return lambda images: images @ weight + bias


def assert_finite_tree(tree):
  for leaf in jax.tree_util.tree_leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf)))


def assert_grad_matches_finite_differences(f, x, eps=1e-2, seed=7):
  """jax.grad(f)(x) . v against a central difference along a random unit direction v."""
  v = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
  v /= np.linalg.norm(v)
  f = jax.jit(f)
  analytic = float(jnp.vdot(jax.grad(f)(x), v))
  numeric = (float(f(x + eps * v)) - float(f(x - eps * v))) / (2 * eps)
  assert analytic == pytest.approx(numeric, rel=1e-2, abs=1e-3)


# ---------------------------------------------------------------------------- extract_masks


def test_extract_masks_matches_loop():
  seg, _, targets = random_inputs()
  target_mask, non_target_mask = losses.extract_masks(seg, targets)
  ref_target, ref_non_target = np_extract_masks(seg, targets)
  np.testing.assert_allclose(target_mask, ref_target, **TOL)
  np.testing.assert_allclose(non_target_mask, ref_non_target, **TOL)
  assert target_mask.shape == (B, H, W)


def test_extract_masks_empty_class_sets_give_zero_and_finite_gradient():
  seg, _, targets = random_inputs()  # image 1 has no target, image 2 only targets
  target_mask, non_target_mask = losses.extract_masks(seg, targets)
  np.testing.assert_array_equal(target_mask[1], 0.0)
  np.testing.assert_array_equal(non_target_mask[2], 0.0)
  assert np.all(np.asarray(non_target_mask[1]) > 0) and np.all(np.asarray(target_mask[2]) > 0)

  def summed(s):
    t, n = losses.extract_masks(s, targets)
    return t.sum() + n.sum()

  grad = jax.grad(summed)(jnp.asarray(seg))
  assert_finite_tree(grad)
  # Each pixel's gradient goes to exactly its max class within each class set.
  assert np.all(np.count_nonzero(np.asarray(grad), axis=-1)[0] == 2)
  assert np.all(np.count_nonzero(np.asarray(grad), axis=-1)[1:] == 1)


# ---------------------------------------------------------------------- classification, entropy


@pytest.mark.parametrize('multilabel', [True, False])
def test_classification_loss_matches_loop(multilabel):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(B, C)).astype(np.float32) * 3
  if multilabel:
    targets = (rng.uniform(size=(B, C)) > 0.5).astype(np.float32)
    expected = np_bce(logits, targets)
  else:
    targets = np.eye(C, dtype=np.float32)[[2, 0, 3]]
    expected = np_softmax_ce(logits, targets)
  np.testing.assert_allclose(losses.classification_loss(logits, targets, multilabel), expected,
                             **TOL)


def test_entropy_loss_matches_loop_and_is_minimal_for_uniform():
  logits = np.random.default_rng(3).normal(size=(B, C)).astype(np.float32) * 5
  np.testing.assert_allclose(losses.entropy_loss(logits), np_entropy_loss(logits), **TOL)
  np.testing.assert_allclose(losses.entropy_loss(np.zeros((B, C))), -math.log(C) / C, **TOL)
  # A one-hot prediction: clipping keeps the value and the gradient finite.
  peaked = np.array([[1000.0, 0.0, 0.0, 0.0]], np.float32)
  assert abs(float(losses.entropy_loss(peaked))) < 1e-12
  assert_finite_tree(jax.grad(losses.entropy_loss)(jnp.asarray(peaked)))


# ---------------------------------------------------------------------------- total variation


@pytest.mark.parametrize('squared', [False, True])
def test_total_variation_matches_loop(squared):
  mask = np.random.default_rng(4).uniform(size=(B, H, W - 2)).astype(np.float32)  # H != W
  np.testing.assert_allclose(losses.total_variation(mask, squared),
                             np_total_variation(mask, squared), **TOL)


def test_total_variation_reflects_at_last_column_and_row():
  # Zero padding would give |1 - 0| = 1 at the last column, replication 0, reflection |1 - 0.2|.
  row = np.array([0.0, 0.0, 0.2, 1.0], np.float32)
  mask = np.stack([row, row])[None]  # (1,2,4); rows equal -> no vertical variation
  np.testing.assert_allclose(losses.total_variation(mask), 2 * (0.2 + 0.8 + 0.8) / 8, **TOL)
  np.testing.assert_allclose(losses.total_variation(np.swapaxes(mask, 1, 2)), 3.6 / 8, **TOL)
  np.testing.assert_allclose(losses.total_variation(mask, squared=True),
                             2 * (0.04 + 0.64 + 0.64) / 8, **TOL)


@pytest.mark.parametrize('value', [0.0, 1.0])
def test_total_variation_of_constant_mask_is_zero(value):
  mask = jnp.full((B, H, W), value)
  assert float(losses.total_variation(mask)) == 0.0
  assert_finite_tree(jax.grad(losses.total_variation)(mask))


# ---------------------------------------------------------------------------- class mask area


@pytest.mark.parametrize('min_area,max_area', [(0.05, 0.3), (0.1, 0.75), (0.0, 0.3), (0.2, 1.0),
                                               (0.0, 1.0), (0.3, 0.3)])
def test_class_mask_area_loss_matches_loop(min_area, max_area):
  seg, _, targets = random_inputs(scale=2.0)
  got = losses.class_mask_area_loss(seg, targets, min_area, max_area)
  np.testing.assert_allclose(got, np_class_mask_area_loss(seg, targets, min_area, max_area), **TOL)
  if (min_area, max_area) == (0.0, 1.0):
    assert float(got) == 0.0


def test_class_mask_area_loss_of_all_zero_and_all_one_masks():
  targets = np.array([[1, 0, 0, 1]], np.float32)  # two target classes
  hw = H * W
  ones, zeros = jnp.full((1, H, W, C), 100.0), jnp.full((1, H, W, C), -100.0)
  # All 1: only the pixels beyond floor(HW*max_area) are penalized, by 1 each, per class.
  expected_ones = 2 * (hw - int(hw * 0.3)) / hw
  np.testing.assert_allclose(losses.class_mask_area_loss(ones, targets, 0.05, 0.3), expected_ones,
                             **TOL)
  expected_zeros = 2 * int(hw * 0.05) / hw
  np.testing.assert_allclose(losses.class_mask_area_loss(zeros, targets, 0.05, 0.3),
                             expected_zeros, **TOL)
  assert float(losses.class_mask_area_loss(ones, np.zeros((1, C)), 0.05, 0.3)) == 0.0


def sorted_area_loss(seg, targets, min_area, max_area):
  """The authors' formulation: sort descending, compare with the 0/1 reference profiles."""
  b, h, w, c = seg.shape
  masks = -jnp.sort(-jax.nn.sigmoid(seg).reshape(b, h * w, c), axis=1)
  index = jnp.arange(h * w)[:, None]
  per_pixel = jnp.zeros_like(masks)
  if min_area > 0:
    per_pixel += jax.nn.relu((index < int(h * w * min_area)) - masks)
  if max_area < 1:
    per_pixel += jax.nn.relu(masks - (index < int(h * w * max_area)))
  return jnp.sum(per_pixel.mean(axis=1) * targets, axis=-1).mean()


@pytest.mark.parametrize('scale', [0.05, 2.0, 40.0])
def test_class_mask_area_loss_gradient_equals_the_sorting_formulation(scale):
  """The sort-free top-k sums give the value and gradient of sorting (saturated masks too)."""
  seg, _, targets = random_inputs(scale=scale)
  for min_area, max_area in [(0.05, 0.3), (0.0, 0.5), (0.2, 1.0)]:
    args = (targets, min_area, max_area)
    value, grad = jax.value_and_grad(losses.class_mask_area_loss)(seg, *args)
    expected_value, expected_grad = jax.value_and_grad(sorted_area_loss)(seg, *args)
    np.testing.assert_allclose(value, expected_value, **TOL)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-9)


def test_class_mask_area_loss_shares_the_gradient_between_tied_pixels():
  """With ties at the k-th largest value, the tied pixels share the gradient that sorting would
  give to an arbitrary subset of them: the sum over the tie is the same."""
  targets = np.array([[1.0]], np.float32)
  seg = jnp.zeros((1, 4, 5, 1)).at[0, 0, :3, 0].set(3.0)  # 3 high pixels, 17 tied at 0.5
  area = 0.3  # k = 6: 3 of the 17 tied pixels belong to the top 6
  grad = jax.grad(losses.class_mask_area_loss)(seg, targets, area, 1.0)
  expected_grad = jax.grad(sorted_area_loss)(seg, targets, area, 1.0)
  tied = np.ones((4, 5), bool)
  tied[0, :3] = False
  np.testing.assert_allclose(grad[0, ~tied, 0], expected_grad[0, ~tied, 0], rtol=1e-6)
  np.testing.assert_allclose(grad[0, tied, 0].sum(), expected_grad[0, tied, 0].sum(), rtol=1e-5)
  np.testing.assert_allclose(grad[0, tied, 0], grad[0, tied, 0].mean(), rtol=1e-6)


def test_class_mask_area_loss_rejects_bad_areas():
  seg, _, targets = random_inputs()
  with pytest.raises(ValueError):
    losses.class_mask_area_loss(seg, targets, 0.5, 0.3)


# ---------------------------------------------------------------------------- explainer loss


def np_explainer_terms(seg, images, targets, weight, bias, min_area=0.05, max_area=0.3):
  target_mask, non_target_mask = np_extract_masks(seg, targets)
  keep = target_mask[..., None]
  return {
      'classification': np_bce(np_classify(keep * images, weight, bias), targets),
      'entropy': np_entropy_loss(np_classify((1 - keep) * images, weight, bias)),
      'tv': np_total_variation(target_mask) + np_total_variation(non_target_mask),
      'area_class': np_class_mask_area_loss(seg, targets, min_area, max_area),
      'area_target': target_mask.mean(),
      'area_non_target': non_target_mask.mean(),
      'single_class': 0.0,
      'class_overlap': np_class_overlap_loss(seg, targets),
      'pooled_class': np_bce(np_pooled_logits(seg, 1.0), targets),
  }


def np_class_overlap_loss(seg, targets):
  """Per pixel: sum minus max of the target classes' sigmoid masks; mean over B,H,W."""
  total = 0.0
  for b in range(seg.shape[0]):
    present = [c for c in range(seg.shape[-1]) if targets[b, c] == 1]
    for i in range(seg.shape[1]):
      for j in range(seg.shape[2]):
        values = [np_sigmoid(seg[b, i, j, c]) for c in present]
        total += sum(values) - max(values) if values else 0.0
  return total / (seg.shape[0] * seg.shape[1] * seg.shape[2])


def np_pooled_logits(seg, sharpness):
  """Per (image, class): log of the mean over pixels of exp(sharpness * S), / sharpness."""
  b_, h_, w_, c_ = seg.shape
  pooled = np.zeros((b_, c_))
  for b in range(b_):
    for c in range(c_):
      values = [sharpness * float(seg[b, i, j, c]) for i in range(h_) for j in range(w_)]
      top = max(values)
      pooled[b, c] = (top + math.log(sum(math.exp(v - top) for v in values) / (h_ * w_))
                      ) / sharpness
  return pooled


@pytest.mark.parametrize('sharpness', [0.5, 1.0, 4.0])
def test_pooled_class_loss_matches_numpy(sharpness):
  seg, _, targets = random_inputs()
  expected = np_bce(np_pooled_logits(seg, sharpness), targets)
  np.testing.assert_allclose(losses.pooled_class_loss(seg, targets, sharpness), expected, **TOL)
  single = np.eye(C, dtype=np.float32)[[1, 3, 0]]
  np.testing.assert_allclose(losses.pooled_class_loss(seg, single, sharpness, multilabel=False),
                             np_softmax_ce(np_pooled_logits(seg, sharpness), single), **TOL)


def test_pooled_class_loss_pools_between_mean_and_max():
  # Small logits: near sharpness 0 the pooling is mean + sharpness * variance / 2.
  seg, _, targets = random_inputs(scale=0.3)
  bce = lambda pooled: np_bce(pooled, targets)
  np.testing.assert_allclose(losses.pooled_class_loss(seg, targets, 1e-2),
                             bce(seg.mean(axis=(1, 2))), rtol=1e-3)
  np.testing.assert_allclose(losses.pooled_class_loss(seg, targets, 1e3),
                             bce(seg.max(axis=(1, 2))), rtol=1e-2)


def test_pooled_class_loss_prefers_the_class_channel_on_its_own_object():
  # One image with class 0 present, class 1 absent; a small confident blob in channel 0 and
  # nothing in channel 1 scores better than the same blob in both channels.
  blob = np.full((1, H, W, 2), -6.0, np.float32)
  blob[0, 2:5, 2:5, :] = 6.0
  own_only = blob.copy()
  own_only[..., 1] = -6.0
  targets = np.array([[1.0, 0.0]], np.float32)
  assert losses.pooled_class_loss(own_only, targets) < losses.pooled_class_loss(blob, targets)
  with pytest.raises(ValueError, match='sharpness > 0'):
    losses.pooled_class_loss(blob, targets, 0.0)


def test_class_overlap_loss_matches_numpy_and_is_zero_for_disjoint_masks():
  seg, _, targets = random_inputs()  # includes the no-target and all-target images
  np.testing.assert_allclose(losses.class_overlap_loss(seg, targets),
                             np_class_overlap_loss(np.asarray(seg), np.asarray(targets)), **TOL)
  # Two target classes on disjoint halves, a non-target class everywhere: no overlap.
  disjoint = np.full((1, H, W, C), -30.0, np.float32)
  disjoint[0, :, :W // 2, 0] = 30.0
  disjoint[0, :, W // 2:, 1] = 30.0
  disjoint[0, :, :, 2] = 30.0
  two_targets = np.array([[1, 1, 0, 0]], np.float32)
  assert float(losses.class_overlap_loss(disjoint, two_targets)) < 1e-6
  # The same two target masks both covering the whole image: overlap 1 per pixel.
  shared = disjoint.copy()
  shared[0, :, :, :2] = 30.0
  np.testing.assert_allclose(losses.class_overlap_loss(shared, two_targets), 1.0, rtol=1e-6)


def np_single_class_loss(seg, images, targets, weight, bias):
  """Per image with a target: the target class with the largest mean mask keeps the image
  alone; BCE of that kept image against the one-hot class, over the image's target classes
  only; mean over those images."""
  total, count = 0.0, 0
  for b in range(seg.shape[0]):
    present = [c for c in range(seg.shape[-1]) if targets[b, c] == 1]
    if not present:
      continue
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
    areas = {c: sigmoid(seg[b, :, :, c]).mean() for c in present}
    chosen = max(present, key=lambda c: (areas[c], -c))
    kept = sigmoid(seg[b, :, :, chosen])[..., None] * images[b]
    logits = np_classify(kept[None], weight, bias)[0]
    total += np.mean([np_bce(logits[None, c:c + 1], np.array([[float(c == chosen)]]))
                      for c in present])
    count += 1
  return total / max(count, 1)


def test_single_class_keep_term_matches_numpy_and_is_off_by_default():
  seg, images, targets = random_inputs()
  targets = np.asarray(targets).copy()
  targets[0] = 0  # an image without a target class is left out of the mean
  targets[1, :3] = 1
  weight, bias = linear_params()
  classify = jax_classify(weight, bias)
  total_off, aux_off = losses.explainer_loss(seg, images, targets, classify)
  total_on, aux_on = losses.explainer_loss(seg, images, targets, classify, lambda_single=2.0)
  expected = np_single_class_loss(np.asarray(seg), np.asarray(images), targets, weight, bias)
  np.testing.assert_allclose(aux_on['single_class'], expected, **TOL)
  assert float(aux_off['single_class']) == 0.0
  np.testing.assert_allclose(total_on, total_off + 2.0 * expected, **TOL)


def test_explainer_loss_matches_numpy_and_is_the_weighted_sum_of_its_terms():
  seg, images, targets = random_inputs()
  weight, bias = linear_params()
  weights = dict(lambda_c=1.5, lambda_e=0.7, lambda_tv=2.0, lambda_ac=0.5, lambda_t=0.1,
                 lambda_nt=0.3, lambda_overlap=0.4)
  total, aux = losses.explainer_loss(seg, images, targets, jax_classify(weight, bias), **weights)
  expected = np_explainer_terms(seg, images, targets, weight, bias)
  assert set(aux) == set(expected) | {'loss'}
  for name, value in expected.items():
    np.testing.assert_allclose(aux[name], value, err_msg=name, **TOL)
  weighted = sum(weights.get(EXPLAINER_WEIGHTS[name], 0.0) * aux[name] for name in expected)
  np.testing.assert_allclose(total, weighted, **TOL)
  np.testing.assert_allclose(aux['loss'], total, **TOL)


def test_explainer_loss_calls_classify_once_on_kept_then_dropped_images():
  seg, images, targets = random_inputs()
  batches = []

  def classify(x):
    batches.append(x)
    return x.mean(axis=(1, 2, 3))[:, None] * jnp.ones((1, C))

  losses.explainer_loss(seg, images, targets, classify)
  assert len(batches) == 1 and batches[0].shape == (2 * B, H, W, 3)
  target_mask, _ = np_extract_masks(seg, targets)
  np.testing.assert_allclose(batches[0][:B], target_mask[..., None] * images, **TOL)
  np.testing.assert_allclose(batches[0][B:], (1 - target_mask[..., None]) * images, **TOL)


def test_explainer_loss_single_label_uses_softmax_cross_entropy():
  seg, images, _ = random_inputs()
  targets = np.eye(C, dtype=np.float32)[[1, 3, 0]]
  weight, bias = linear_params()
  _, aux = losses.explainer_loss(seg, images, targets, jax_classify(weight, bias),
                                 multilabel=False)
  target_mask, _ = np_extract_masks(seg, targets)
  logits = np_classify(target_mask[..., None] * images, weight, bias)
  np.testing.assert_allclose(aux['classification'], np_softmax_ce(logits, targets), **TOL)


@jax.jit
def _explainer_grad(seg, images, targets, weight, bias, weights):
  """Gradient of the total w.r.t. the segmentations; weights traced, so one compilation."""
  def loss(s):
    return losses.explainer_loss(s, images, targets, jax_classify(weight, bias), **weights)[0]
  return jax.grad(loss)(seg)


def test_explainer_loss_zero_weights_switch_terms_off():
  seg, images, targets = random_inputs()  # includes the no-target and all-target images
  args = (seg, images, targets, *linear_params())
  all_off = {w: 0.0 for w in EXPLAINER_WEIGHTS.values()}
  np.testing.assert_array_equal(_explainer_grad(*args, all_off), 0.0)  # no NaN behind a 0
  # lambda_single > 0 computes the (otherwise skipped) single-class term; aux is unweighted.
  term_grads = jax.jit(jax.jacrev(lambda s: losses.explainer_loss(
      s, images, targets, jax_classify(*linear_params()), lambda_single=1.0)[1]))(seg)
  for name, weight_name in EXPLAINER_WEIGHTS.items():
    only = np.asarray(_explainer_grad(*args, {**all_off, weight_name: 1.0}))
    assert np.all(np.isfinite(only)), name
    assert np.abs(only).max() > 0, name
    np.testing.assert_allclose(only, term_grads[name], err_msg=name, **TOL)
  # Turning one term off removes exactly that term's gradient from the default total.
  defaults = dict(lambda_c=1.0, lambda_e=1.0, lambda_tv=1.0, lambda_ac=1.0, lambda_t=0.1,
                  lambda_nt=0.3)
  full = _explainer_grad(*args, defaults)
  no_tv = _explainer_grad(*args, {**defaults, 'lambda_tv': 0.0})
  np.testing.assert_allclose(full - no_tv, term_grads['tv'], rtol=1e-4, atol=1e-6)


def test_explainer_loss_jit_matches_eager_and_keys_are_fixed():
  seg, images, targets = random_inputs()
  weight, bias = linear_params()
  classify = jax_classify(weight, bias)
  settings = [{}, dict(lambda_e=0.0, lambda_tv=0.0, min_area=0.0, max_area=1.0, multilabel=False)]
  keys = set()
  for kwargs in settings:
    fn = functools.partial(losses.explainer_loss, classify=classify, **kwargs)
    eager_total, eager_aux = fn(seg, images, targets)
    jit_total, jit_aux = jax.jit(fn)(seg, images, targets)
    np.testing.assert_allclose(jit_total, eager_total, **TOL)
    for name in eager_aux:
      np.testing.assert_allclose(jit_aux[name], eager_aux[name], err_msg=name, **TOL)
    assert_finite_tree(jax.jit(jax.grad(lambda s: fn(s, images, targets)[0]))(seg))
    keys.add(tuple(sorted(jit_aux)))
  assert len(keys) == 1


def test_loss_gradients_match_finite_differences():
  seg, images, targets = random_inputs(scale=1.0)
  weight, bias = linear_params()
  classify = jax_classify(weight, bias)
  assert_grad_matches_finite_differences(
      lambda s: losses.explainer_loss(s, images, targets, classify)[0], jnp.asarray(seg))
  assert_grad_matches_finite_differences(
      lambda s: losses.real_time_saliency_loss(s, images, targets, classify)[0], jnp.asarray(seg))
  # Self-explainer w.r.t. the network's weights: the student's input m_t * x depends on them.
  assert_grad_matches_finite_differences(
      lambda w: losses.self_explainer_loss(jax_segment(w, bias), images, targets)[0],
      jnp.asarray(weight))


# ---------------------------------------------------------------------------- real-time saliency


def np_real_time_saliency_terms(seg, images, targets, weight, bias, alt):
  target_mask, _ = np_extract_masks(seg, targets)
  keep = target_mask[..., None]
  logits_keep = np_classify(keep * images + (1 - keep) * alt, weight, bias)
  logits_drop = np_classify((1 - keep) * images + keep * alt, weight, bias)
  pairs = [(b, c) for b in range(B) for c in range(C) if targets[b, c] == 1]
  return {
      'tv': np_total_variation(target_mask, squared=True),
      'area': target_mask.mean(),
      'preserver': sum(-math.log(np_sigmoid(logits_keep[b, c])) for b, c in pairs) / len(pairs),
      'destroyer': sum(np_sigmoid(logits_drop[b, c]) for b, c in pairs) / len(pairs),
  }


@pytest.mark.parametrize('with_alternative', [False, True])
def test_real_time_saliency_loss_matches_numpy(with_alternative):
  seg, images, targets = random_inputs()
  weight, bias = linear_params()
  alt = np.random.default_rng(5).normal(size=images.shape).astype(np.float32)
  kwargs = dict(alternative_images=alt) if with_alternative else {}
  total, aux = losses.real_time_saliency_loss(seg, images, targets, jax_classify(weight, bias),
                                              **kwargs)
  expected = np_real_time_saliency_terms(seg, images, targets, weight, bias,
                                         alt if with_alternative else 0.0)
  assert set(aux) == set(expected) | {'loss'}
  for name, value in expected.items():
    np.testing.assert_allclose(aux[name], value, err_msg=name, **TOL)
  e = expected
  np.testing.assert_allclose(
      total, 10 * e['tv'] + e['area'] + e['preserver'] + 5 * e['destroyer'] ** 0.3, **TOL)


def test_real_time_saliency_loss_edge_cases_have_finite_gradients():
  seg, images, _ = random_inputs()
  weight, bias = linear_params()
  no_targets = np.zeros((B, C), np.float32)
  off = dict(lambda_tv=0.0, lambda_area=0.0, lambda_preserve=0.0, lambda_destroy=0.0)

  def grads(targets, classify, **kwargs):
    return jax.grad(lambda s, x: losses.real_time_saliency_loss(s, x, targets, classify,
                                                                **kwargs)[0], argnums=(0, 1))(
                                                                    jnp.asarray(seg), images)

  classify = jax_classify(weight, bias)
  total, aux = losses.real_time_saliency_loss(seg, images, no_targets, classify)
  assert float(aux['preserver']) == 0.0 and float(aux['destroyer']) == 0.0
  assert np.isfinite(float(total))
  assert_finite_tree(grads(no_targets, classify))
  for leaf in grads(no_targets, classify, **off):
    np.testing.assert_array_equal(leaf, 0.0)
  # A saturated classifier: sigmoid(dropped logits) underflows to 0, destroyer**0.3 stays finite.
  _, _, targets = random_inputs()
  saturated = lambda x: classify(x) - 300.0
  _, aux = losses.real_time_saliency_loss(seg, images, targets, saturated)
  assert float(aux['destroyer']) == 0.0 and np.isfinite(float(aux['preserver']))
  assert_finite_tree(grads(targets, saturated))


def np_blur(images, sigma):
  radius = math.ceil(4 * sigma)
  taps = np.exp(-(np.arange(-radius, radius + 1) / (math.sqrt(2) * sigma)) ** 2)
  taps /= taps.sum()
  out = np.zeros_like(images, dtype=np.float64)
  n_, h_, w_, c_ = images.shape
  for n in range(n_):
    for i in range(h_):
      for j in range(w_):
        for k in range(c_):
          out[n, i, j, k] = sum(
              taps[di + radius] * taps[dj + radius] * images[n, i + di, j + dj, k]
              for di in range(-radius, radius + 1) for dj in range(-radius, radius + 1)
              if 0 <= i + di < h_ and 0 <= j + dj < w_)
  return out


def test_saliency_alternative_images_are_zero_padded_blur_or_colour_noise():
  images = np.random.default_rng(6).normal(size=(2, 6, 7, 3)).astype(np.float32)
  blurred = np_blur(images, sigma=1.0)
  make = jax.jit(functools.partial(losses.saliency_alternative_images, sigma=1.0))
  kinds = set()
  for seed in range(16):
    alt = np.asarray(make(jax.random.key(seed), images))
    assert alt.shape == images.shape and alt.dtype == images.dtype
    if np.allclose(alt, blurred, rtol=1e-4, atol=1e-5):
      kinds.add('blur')
    else:
      # Colour: per (image, channel) offset within +-0.33 around a noise mean of 0.11.
      kinds.add('colour')
      assert not np.allclose(alt, images)
  assert kinds == {'blur', 'colour'}


# ---------------------------------------------------------------------------- self-explainer


def np_self_explainer_terms(images, targets, weight, bias, min_area=0.05, max_area=0.3):
  seg_t = np_segment(images, weight, bias)
  mask_t, nc_t = np_extract_masks(seg_t, targets)
  seg_s = np_segment(mask_t[..., None] * images, weight, bias)
  mask_s, nc_s = np_extract_masks(seg_s, targets)
  logits_t, logits_s = seg_t.mean(axis=(1, 2)), seg_s.mean(axis=(1, 2))
  return {
      'classification_teacher': np_bce(logits_t, targets),
      'classification_student': np_bce(logits_s, targets),
      'similarity': np.abs(logits_t - logits_s).mean(),
      'tv': np_total_variation(mask_t) + np_total_variation(mask_s),
      'area_class': (np_class_mask_area_loss(seg_t, targets, min_area, max_area)
                     + np_class_mask_area_loss(seg_s, targets, min_area, max_area)),
      'area_target': mask_t.mean() + mask_s.mean(),
      'area_non_target': nc_t.mean() + nc_s.mean(),
      'coherency': np.abs(mask_t - mask_s).mean(),
  }


def test_self_explainer_loss_matches_numpy_and_is_the_weighted_sum_of_its_terms():
  _, images, targets = random_inputs()
  weight, bias = linear_params()
  weights = dict(lambda_c=1.2, lambda_similarity=0.8, lambda_tv=2.0, lambda_ac=0.5,
                 lambda_t=0.1, lambda_nt=0.3, lambda_coherency=1.5)
  total, aux = losses.self_explainer_loss(jax_segment(weight, bias), images, targets, **weights)
  expected = np_self_explainer_terms(images, targets, weight, bias)
  assert set(aux) == set(expected) | {'loss'}
  for name, value in expected.items():
    np.testing.assert_allclose(aux[name], value, err_msg=name, **TOL)
  weighted = sum(weights[SELF_EXPLAINER_WEIGHTS[name]] * aux[name] for name in expected)
  np.testing.assert_allclose(total, weighted, **TOL)


def test_self_explainer_loss_zero_weights_and_jit():
  _, images, targets = random_inputs()
  params = tuple(jnp.asarray(p) for p in linear_params())

  def loss(p, weights):
    return losses.self_explainer_loss(jax_segment(*p), images, targets, **weights)[0]

  grad_fn = jax.jit(jax.grad(loss))  # weights traced: one compilation for all settings
  all_off = {w: 0.0 for w in set(SELF_EXPLAINER_WEIGHTS.values())}
  for leaf in grad_fn(params, all_off):
    np.testing.assert_array_equal(leaf, 0.0)
  for weight_name in all_off:
    grad = grad_fn(params, {**all_off, weight_name: 1.0})
    assert_finite_tree(grad)
    assert max(float(jnp.abs(g).max()) for g in grad) > 0, weight_name
  eager = loss(params, {})
  np.testing.assert_allclose(jax.jit(loss)(params, {}), eager, **TOL)
  assert_finite_tree(grad_fn(params, {}))


def test_binary_masks_show_the_classifier_thresholded_masks_with_the_soft_gradient():
  segmentations = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)) * 3.0
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  targets = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  seen = []

  def classify(batch):
    seen.append(batch)
    return batch.mean(axis=(1, 2))

  losses.explainer_loss(segmentations, images, targets, classify, binary_masks=True,
                        lambda_single=0.5)
  target_mask, _ = losses.extract_masks(segmentations, targets)
  kept, dropped, _ = jnp.split(seen[-1], 3)
  hard = (target_mask > 0.5)[..., None]
  np.testing.assert_allclose(kept, jnp.where(hard, images, 0.0))
  np.testing.assert_allclose(dropped, jnp.where(hard, 0.0, images))
  # The gradient reaches the segmentations as through the soft masks (straight through).
  mask = jax.nn.sigmoid(segmentations[..., 0])
  np.testing.assert_allclose(jax.grad(lambda m: losses.straight_through_binary(m).sum())(mask),
                             1.0)
  grads = jax.grad(lambda s: losses.explainer_loss(s, images, targets, classify,
                                                   binary_masks=True)[0])(segmentations)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_binary_masks_stop_a_scale_invariant_classifier_reading_a_faint_mask_as_the_image():
  colours = jnp.array([[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]])[:, None, None]
  images = 0.3 * jax.random.normal(jax.random.key(2), (2, 8, 8, 3)) + colours
  weights = jnp.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])  # image i shows class i

  def classify(batch):  # normalizes each image first, as per-image normalization layers do
    flat = batch.reshape(batch.shape[0], -1)
    normalized = flat / (jnp.linalg.norm(flat, axis=-1, keepdims=True) + 1e-6)
    return 300.0 * normalized.reshape(batch.shape).mean(axis=(1, 2)) @ weights

  targets = jnp.eye(2)

  faint = jnp.full((2, 8, 8, 2), -3.0)  # sigmoid(-3) = 0.047 everywhere
  soft = losses.explainer_loss(faint, images, targets, classify)[1]['classification']
  full = losses.explainer_loss(jnp.full((2, 8, 8, 2), 9.0), images, targets,
                               classify)[1]['classification']
  binary = losses.explainer_loss(faint, images, targets, classify,
                                 binary_masks=True)[1]['classification']
  assert full < 0.3
  np.testing.assert_allclose(soft, full, rtol=1e-3)  # the faint mask keeps the whole image
  assert binary > soft + 0.3  # the binary mask keeps nothing of it


def test_blur_fill_puts_the_blurred_image_where_the_mask_removes_pixels():
  segmentations = jax.random.normal(jax.random.key(4), (2, 16, 16, 3)) * 3.0
  images = jax.random.normal(jax.random.key(5), (2, 16, 16, 3))
  targets = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  seen = []

  def classify(batch):
    seen.append(batch)
    return batch.mean(axis=(1, 2))

  losses.explainer_loss(segmentations, images, targets, classify, fill='blur',
                        fill_blur_sigma=0.25)
  mask = losses.extract_masks(segmentations, targets)[0][..., None]
  blurred = losses.blurred_images(images, 0.25)
  kept, dropped = jnp.split(seen[-1], 2)
  np.testing.assert_allclose(kept, mask * images + (1 - mask) * blurred, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dropped, (1 - mask) * images + mask * blurred, rtol=1e-5, atol=1e-6)
  # The blur keeps a flat image as it is (no darkening at the borders) and smooths noise.
  np.testing.assert_allclose(losses.blurred_images(jnp.full((1, 9, 7, 3), 2.0), 0.2), 2.0,
                             rtol=1e-5)
  assert float(blurred.std()) < 0.5 * float(images.std())
  with pytest.raises(ValueError, match='fill'):
    losses.explainer_loss(segmentations, images, targets, classify, fill='noise')
