"""Tests for wysiwyc.metrics against slow, independent NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wysiwyc import metrics

H, W = 16, 20  # not square, to catch transposed axes
F1_KEYS = ['f1@0.25', 'f1@0.5', 'f1@0.75']
IOU_KEYS = [f'iou@0.{i}' for i in range(1, 10)]
DOCUMENTED_KEYS = F1_KEYS + ['mean_f1', 'cont_f1', 'accuracy'] + IOU_KEYS + [
    'cont_iou', 'auc', 'overlap', 'object_coverage', 'background_coverage']


def random_pair(seed, quantize=None):
  """A mask in [0,1] (optionally with few distinct values, for ties) and a blob-like seg."""
  rng = np.random.default_rng(seed)
  mask = rng.random((H, W)).astype(np.float32)
  if quantize:
    mask = (np.round(mask * quantize) / quantize).astype(np.float32)
  seg = np.zeros((H, W), np.float32)
  top, left = rng.integers(0, H // 2), rng.integers(0, W // 2)
  seg[top:top + rng.integers(2, H // 2), left:left + rng.integers(2, W // 2)] = 1
  seg[rng.random((H, W)) < 0.1] = 1
  return mask, seg


def _batch(n=4):
  pairs = [random_pair(seed) for seed in range(n)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# ----------------------------------------------------------------- NumPy references
def np_confusion(predicted, actual):
  tp = np.sum(predicted & actual)
  fp = np.sum(predicted & ~actual)
  fn = np.sum(~predicted & actual)
  return tp, fp, fn


def np_discrete_iou(mask, seg, t):
  predicted, actual = mask > t, seg > 0.5
  union = np.sum(predicted | actual)
  return 1.0 if union == 0 else np.sum(predicted & actual) / union


def np_discrete_f1(mask, seg, t):
  tp, fp, fn = np_confusion(mask > t, seg > 0.5)
  if tp + fp + fn == 0:
    return 1.0
  if tp == 0:
    return 0.0
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  return 2 * precision * recall / (precision + recall)


def np_soft_f1(mask, seg):
  m, s = mask.astype(np.float64), seg.astype(np.float64)
  tp, fp, fn = np.sum(m * s), np.sum(m * (1 - s)), np.sum((1 - m) * s)
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  return 2 * precision * recall / (precision + recall)


def np_pairwise_auc(mask, seg):
  """Explicit count over every (object, background) pixel pair, ties 1/2."""
  positives, negatives = mask[seg > 0.5], mask[seg <= 0.5]
  if positives.size == 0 or negatives.size == 0:
    return float('nan')
  diff = positives[:, None].astype(np.float64) - negatives[None, :]
  return (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size


def np_rank_auc(mask, seg):
  """Mann-Whitney U from average ranks (for images too large for pairwise counts)."""
  scores, labels = mask.ravel().astype(np.float64), seg.ravel() > 0.5
  values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  first_rank = np.cumsum(counts) - counts + 1
  ranks = (first_rank + (counts - 1) / 2.0)[inverse]
  n_pos, n_neg = labels.sum(), (~labels).sum()
  return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def np_coverage(mask, seg):
  """Soft recall of the object: covered object mass / object area (binary seg)."""
  return np.sum(mask * seg) / np.sum(seg)


def np_background_coverage(mask, seg):
  """Mask mass on the background / background area (binary seg)."""
  return np.sum(mask * (1 - seg)) / np.sum(1 - seg)


# ----------------------------------------------------------------------- per image
@pytest.mark.parametrize('seed', range(4))
def test_continuous_metrics_match_numpy(seed):
  mask, seg = random_pair(seed)
  m, s = mask.astype(np.float64), seg.astype(np.float64)
  expected = {
      'cont_iou': np.sum(np.minimum(m, s)) / np.sum(np.maximum(m, s)),
      'soft_f1': np_soft_f1(mask, seg),
      'soft_accuracy': np.sum(m * s + (1 - m) * (1 - s)) / m.size,
      'overlap': 1 - np.mean(np.abs(s - m)),
      'mask_coverage': np_coverage(m, s),
      'background_coverage': np_background_coverage(m, s),
  }
  got = {
      'cont_iou': metrics.continuous_iou(mask, seg),
      'soft_f1': metrics.soft_f1(mask, seg),
      'soft_accuracy': metrics.soft_accuracy(mask, seg),
      'overlap': metrics.overlap(mask, seg),
      'mask_coverage': metrics.mask_coverage(mask, seg),
      'background_coverage': metrics.background_coverage(mask, seg),
  }
  for name in expected:
    np.testing.assert_allclose(float(got[name]), expected[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('threshold', [0.1, 0.25, 0.5, 0.75, 0.9])
def test_discrete_metrics_match_numpy(seed, threshold):
  mask, seg = random_pair(seed, quantize=20)  # values land exactly on some thresholds
  np.testing.assert_allclose(float(metrics.discrete_iou(mask, seg, threshold)),
                             np_discrete_iou(mask, seg, threshold), rtol=1e-6)
  np.testing.assert_allclose(float(metrics.discrete_f1(mask, seg, threshold)),
                             np_discrete_f1(mask, seg, threshold), rtol=1e-6)


def test_threshold_is_strict():
  seg = np.zeros((H, W), np.float32)
  seg[:4] = 1
  mask = np.where(seg > 0, 0.5, 0.0).astype(np.float32)
  assert float(metrics.discrete_iou(mask, seg, 0.5)) == 0.0
  assert float(metrics.discrete_f1(mask, seg, 0.5)) == 0.0
  assert float(metrics.discrete_iou(mask, seg, 0.49)) == 1.0


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('quantize', [None, 4, 1])  # 1: only scores 0 and 1, many ties
def test_auc_matches_pairwise_count(seed, quantize):
  mask, seg = random_pair(seed, quantize=quantize)
  np.testing.assert_allclose(float(metrics.auc(mask, seg)), np_pairwise_auc(mask, seg),
                             rtol=1e-6)


def test_auc_matches_sklearn():
  sklearn_metrics = pytest.importorskip('sklearn.metrics')
  for seed in range(3):
    mask, seg = random_pair(seed, quantize=8)
    expected = sklearn_metrics.roc_auc_score(seg.ravel() > 0, mask.ravel())
    np.testing.assert_allclose(float(metrics.auc(mask, seg)), expected, rtol=1e-6)


@pytest.mark.parametrize('size', [224, 320])  # 320x320 takes the no-int32-overflow path
def test_auc_on_large_images_is_accurate(size):
  rng = np.random.default_rng(size)
  mask = (np.round(rng.random((size, size)) * 50) / 50).astype(np.float32)
  seg = (rng.random((size, size)) < 0.4 + 0.3 * mask).astype(np.float32)
  auc = jax.jit(metrics.auc)
  np.testing.assert_allclose(float(auc(mask, seg)), np_rank_auc(mask, seg), atol=2e-6)
  assert float(auc(seg, seg)) == 1.0
  assert float(auc(np.full_like(mask, 0.3), seg)) == 0.5


def test_auc_known_values():
  seg = np.zeros((H, W), np.float32)
  seg[:, :5] = 1
  assert float(metrics.auc(seg, seg)) == 1.0
  assert float(metrics.auc(1 - seg, seg)) == 0.0
  assert float(metrics.auc(np.full((H, W), 0.3, np.float32), seg)) == 0.5


@pytest.mark.parametrize('fill', [0.0, 1.0])
def test_auc_is_nan_when_seg_has_one_class(fill):
  mask, _ = random_pair(0)
  assert math.isnan(float(metrics.auc(mask, np.full((H, W), fill, np.float32))))


def test_saliency():
  mask, _ = random_pair(1)
  np.testing.assert_allclose(float(metrics.saliency(mask, 0.8)),
                             np.log(mask.mean()) - np.log(0.8), rtol=1e-5)
  small = np.zeros((H, W), np.float32)
  small[0, 0] = 1.0  # area 1/320 < 0.05: floored
  np.testing.assert_allclose(float(metrics.saliency(small, 0.5)),
                             np.log(0.05) - np.log(0.5), rtol=1e-5)
  assert np.isfinite(float(metrics.saliency(small, 0.0)))


def _edge_pairs():
  zeros, ones = np.zeros((H, W), np.float32), np.ones((H, W), np.float32)
  mask, seg = random_pair(3)
  return {
      'empty_mask_empty_seg': (zeros, zeros),
      'empty_mask_full_seg': (zeros, ones),
      'full_mask_empty_seg': (ones, zeros),
      'full_mask_full_seg': (ones, ones),
      'random_mask_empty_seg': (mask, zeros),
      'random_mask_full_seg': (mask, ones),
      'empty_mask_random_seg': (zeros, seg),
  }


def test_edge_cases_never_nan_except_auc():
  pairs = _edge_pairs()
  masks = np.stack([mask for mask, _ in pairs.values()])
  segs = np.stack([seg for _, seg in pairs.values()])
  scores = metrics.score_masks(masks, segs, np.zeros(len(pairs), np.float32))
  for i, case in enumerate(pairs):
    one_class = segs[i].min() == segs[i].max()
    for name, values in scores.items():
      value = float(values[i])
      if name == 'auc' and one_class:
        assert math.isnan(value), (case, name)
      else:
        assert np.isfinite(value), (case, name)


def test_edge_case_values():
  pairs = _edge_pairs()
  zeros, ones = pairs['empty_mask_full_seg']
  # Empty prediction and empty truth agree perfectly.
  assert float(metrics.continuous_iou(zeros, zeros)) == 1.0
  assert float(metrics.discrete_iou(zeros, zeros, 0.5)) == 1.0
  assert float(metrics.discrete_f1(zeros, zeros, 0.5)) == 1.0
  assert float(metrics.soft_f1(zeros, zeros)) == 1.0
  # Coverages follow the authors: 0 when their denominator is empty.
  assert float(metrics.mask_coverage(ones, zeros)) == 0.0
  assert float(metrics.background_coverage(ones, ones)) == 0.0
  assert float(metrics.background_coverage(ones, zeros)) == 1.0
  # Nothing predicted on a full object.
  for fn in (metrics.continuous_iou, metrics.soft_f1, metrics.mask_coverage,
             metrics.overlap, metrics.soft_accuracy):
    assert float(fn(zeros, ones)) == 0.0, fn.__name__
  mask, _ = pairs['random_mask_empty_seg']
  assert float(metrics.discrete_iou(mask, zeros, 0.1)) == 0.0
  assert float(metrics.continuous_iou(mask, zeros)) == 0.0


def test_bool_seg_equals_float_seg():
  masks, segs = _batch()
  as_float = metrics.score_masks(masks, segs)
  as_bool = metrics.score_masks(masks, segs > 0)
  for name in as_float:
    np.testing.assert_array_equal(np.asarray(as_float[name]), np.asarray(as_bool[name]), name)


def test_per_image_functions_jit_and_vmap():
  pairs = [random_pair(seed) for seed in range(3)]
  masks, segs = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
  thresholds = jnp.array([0.2, 0.5, 0.8])
  batched_iou = jax.jit(jax.vmap(metrics.discrete_iou))(masks, segs, thresholds)
  batched_auc = jax.jit(jax.vmap(metrics.auc))(masks, segs)
  for i, (mask, seg) in enumerate(pairs):
    np.testing.assert_allclose(float(batched_iou[i]),
                               np_discrete_iou(mask, seg, float(thresholds[i])), rtol=1e-6)
    np.testing.assert_allclose(float(batched_auc[i]), np_pairwise_auc(mask, seg), rtol=1e-6)


# ------------------------------------------------------------------------- batched
def test_score_masks_keys_and_values():
  masks, segs = _batch()
  scores = metrics.score_masks(masks, segs)
  assert sorted(scores) == sorted(DOCUMENTED_KEYS)
  assert sorted(metrics.metric_names()) == sorted(DOCUMENTED_KEYS)
  probs = np.linspace(0.1, 0.9, len(masks)).astype(np.float32)
  with_saliency = metrics.score_masks(masks, segs, probs)
  assert sorted(with_saliency) == sorted(DOCUMENTED_KEYS + ['saliency'])
  for i, (mask, seg) in enumerate(zip(masks, segs)):
    expected = {
        'f1@0.5': np_discrete_f1(mask, seg, 0.5),
        'mean_f1': np.mean([np_discrete_f1(mask, seg, t) for t in (0.25, 0.5, 0.75)]),
        'iou@0.3': np_discrete_iou(mask, seg, 0.3),
        'iou@0.9': np_discrete_iou(mask, seg, 0.9),
        'cont_f1': np_soft_f1(mask, seg),
        'auc': np_pairwise_auc(mask, seg),
        'object_coverage': np_coverage(mask, seg),
        'saliency': np.log(max(mask.mean(), 0.05)) - np.log(probs[i]),
    }
    for name, value in expected.items():
      np.testing.assert_allclose(float(with_saliency[name][i]), value, rtol=1e-5, err_msg=name)
  for name in DOCUMENTED_KEYS:
    assert with_saliency[name].shape == (len(masks),), name
    np.testing.assert_array_equal(np.asarray(with_saliency[name]), np.asarray(scores[name]))


def test_summarize_means_and_nanmean_for_auc():
  masks, segs = _batch(4)
  segs[0] = 0.0  # auc undefined for this image
  per_image = metrics.score_masks(masks, segs)
  summary = metrics.summarize(per_image)
  assert sorted(summary) == sorted(DOCUMENTED_KEYS)
  assert all(type(v) is float for v in summary.values())
  assert math.isnan(float(per_image['auc'][0]))
  np.testing.assert_allclose(summary['auc'], np.mean(np.asarray(per_image['auc'])[1:]), rtol=1e-6)
  np.testing.assert_allclose(summary['cont_iou'], np.mean(np.asarray(per_image['cont_iou'])),
                             rtol=1e-6)
  all_undefined = metrics.summarize({'auc': np.array([np.nan, np.nan])})
  assert math.isnan(all_undefined['auc'])


def test_reference_masks_score_as_they_must():
  _, segs = _batch(4)
  references = metrics.reference_masks(segs)
  assert sorted(references) == ['all_0', 'all_0.5', 'all_1', 'ground_truth']
  area = segs.mean(axis=(1, 2))

  truth = metrics.score_masks(references['ground_truth'], segs)
  for name in IOU_KEYS + F1_KEYS + ['mean_f1', 'cont_iou', 'cont_f1', 'accuracy', 'overlap',
                                    'object_coverage', 'auc']:
    np.testing.assert_allclose(np.asarray(truth[name]), 1.0, err_msg=name)
  np.testing.assert_allclose(np.asarray(truth['background_coverage']), 0.0)

  nothing = metrics.score_masks(references['all_0'], segs)
  for name in IOU_KEYS + F1_KEYS + ['cont_iou', 'cont_f1', 'object_coverage',
                                    'background_coverage']:
    np.testing.assert_allclose(np.asarray(nothing[name]), 0.0, err_msg=name)
  np.testing.assert_allclose(np.asarray(nothing['auc']), 0.5)
  np.testing.assert_allclose(np.asarray(nothing['overlap']), 1 - area, rtol=1e-6)

  everything = metrics.score_masks(references['all_1'], segs)
  for name in IOU_KEYS + ['cont_iou']:
    np.testing.assert_allclose(np.asarray(everything[name]), area, rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(np.asarray(everything['object_coverage']), 1.0)
  np.testing.assert_allclose(np.asarray(everything['background_coverage']), 1.0)

  half = metrics.score_masks(references['all_0.5'], segs)
  for name in ['iou@0.1', 'iou@0.4']:  # 0.5 > t: the whole image
    np.testing.assert_allclose(np.asarray(half[name]), area, rtol=1e-6, err_msg=name)
  for name in ['iou@0.5', 'iou@0.9', 'f1@0.5', 'f1@0.75']:  # strict threshold: nothing
    np.testing.assert_allclose(np.asarray(half[name]), 0.0, err_msg=name)
  np.testing.assert_allclose(np.asarray(half['object_coverage']), 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(half['background_coverage']), 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(half['cont_iou']), 0.5 * area / (area + 0.5 * (1 - area)),
                             rtol=1e-5)


def test_merge_class_masks():
  rng = np.random.default_rng(0)
  class_masks = rng.random((3, 4, 5, 6)).astype(np.float32)
  targets = np.array([[1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], np.float32)
  merged = np.asarray(metrics.merge_class_masks(class_masks, targets))
  assert merged.shape == (3, 4, 5)
  for b in range(3):
    expected = np.zeros((4, 5), np.float32)
    for c in range(6):
      if targets[b, c] == 1:
        expected = np.maximum(expected, class_masks[b, :, :, c])
    np.testing.assert_array_equal(merged[b], expected)
  np.testing.assert_array_equal(
      np.asarray(metrics.merge_class_masks(class_masks, targets > 0)), merged)


# ------------------------------------------- metrics that query a classifier; sanity check


def brightness_classifier(images):
  """Two 'classes': sigmoid of the mean red and of the mean blue value (times 4)."""
  means = images.mean(axis=(1, 2))
  return jax.nn.sigmoid(4.0 * jnp.stack([means[:, 0], means[:, 2]], -1))


def np_insertion_deletion(images, saliency, class_index, num_steps, del_base, ins_base):
  out = {'insertion': [], 'deletion': []}
  for p in range(images.shape[0]):
    order = np.argsort(-saliency[p].ravel(), kind='stable')
    n = saliency[p].size
    ins, dele = [], []
    for k in range(num_steps + 1):
      chosen = np.zeros(n, bool)
      chosen[order[:int(np.round(k * n / num_steps))]] = True
      chosen = chosen.reshape(saliency[p].shape)[..., None]
      deleted = np.where(chosen, del_base[p], images[p])
      inserted = np.where(chosen, images[p], ins_base[p])
      probs = np.asarray(brightness_classifier(jnp.asarray(np.stack([deleted, inserted]))))
      dele.append(probs[0, class_index[p]])
      ins.append(probs[1, class_index[p]])
    out['insertion'].append(np.trapezoid(ins, dx=1.0 / num_steps))
    out['deletion'].append(np.trapezoid(dele, dx=1.0 / num_steps))
  return out


def test_insertion_deletion_match_a_numpy_loop_and_reward_the_right_ranking():
  rng = np.random.default_rng(0)
  images = rng.normal(0, 1, (3, H, W, 3)).astype(np.float32)
  saliency = rng.random((3, H, W)).astype(np.float32)
  saliency[0] = 0.5  # all ties: raster order
  class_index = np.array([0, 1, 0])
  blurred = np.full_like(images, 0.1)
  got = metrics.insertion_deletion(brightness_classifier, images, saliency, class_index,
                                   num_steps=5, insertion_baseline=blurred)
  expected = np_insertion_deletion(images, saliency, class_index, 5, np.zeros_like(images),
                                   blurred)
  np.testing.assert_allclose(got['insertion'], expected['insertion'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got['deletion'], expected['deletion'], rtol=1e-5, atol=1e-6)
  assert got['insertion_curve'].shape == (3, 6)
  # Ranking red pixels by their red value: deleting them first drops p(red) fastest.
  good = images[..., 0]
  scores = {name: metrics.insertion_deletion(brightness_classifier, images, s,
                                             np.zeros(3, np.int32), num_steps=8)
            for name, s in (('good', good), ('bad', -good))}
  assert np.all(scores['good']['deletion'] < scores['bad']['deletion'])
  assert np.all(scores['good']['insertion'] > scores['bad']['insertion'])


def test_insertion_deletion_jits_and_checks_shapes():
  images = jnp.zeros((2, H, W, 3))
  fn = jax.jit(lambda x, s, c: metrics.insertion_deletion(brightness_classifier, x, s, c,
                                                          num_steps=3)['deletion'])
  np.testing.assert_allclose(fn(images, jnp.zeros((2, H, W)), jnp.zeros(2, jnp.int32)), 0.5)
  with pytest.raises(AssertionError):
    metrics.insertion_deletion(brightness_classifier, images, jnp.zeros((2, H, W + 1)),
                               jnp.zeros(2, jnp.int32))


def test_pointing_game_hit():
  seg = np.zeros((H, W), np.float32)
  seg[2:5, 3:6] = 1
  sal = np.zeros((H, W), np.float32)
  sal[3, 4] = 1
  assert float(metrics.pointing_game_hit(sal, seg)) == 1.0
  sal = np.zeros((H, W), np.float32)
  sal[8, 4] = 1  # 4 rows below the object
  assert float(metrics.pointing_game_hit(sal, seg)) == 0.0
  assert float(metrics.pointing_game_hit(sal, seg, tolerance=3.9)) == 0.0
  assert float(metrics.pointing_game_hit(sal, seg, tolerance=4.0)) == 1.0
  assert float(metrics.pointing_game_hit(sal, np.zeros_like(seg), tolerance=100)) == 0.0
  # Ties: the first maximum in raster order (0, 0) counts.
  assert float(metrics.pointing_game_hit(np.ones((H, W)), seg)) == 0.0
  corner = np.zeros((H, W), np.float32)
  corner[0, 0] = 1
  assert float(metrics.pointing_game_hit(np.ones((H, W)), corner)) == 1.0


def test_class_specificity_matches_a_numpy_loop():
  rng = np.random.default_rng(1)
  images = rng.normal(0.5, 1, (2, H, W, 3)).astype(np.float32)
  masks = rng.random((2, H, W, 2)).astype(np.float32)
  thresholds = (0.2, 0.5, 0.8)
  got = np.asarray(metrics.class_specificity(brightness_classifier, images, masks, thresholds))
  assert got.shape == (2, 2, 2)
  for b in range(2):
    for t in range(2):
      for m in range(2):
        probs = [np.asarray(brightness_classifier(jnp.asarray(
            images[b:b + 1] * (masks[b, :, :, m] > thr)[None, ..., None])))[0, t]
                 for thr in thresholds]
        np.testing.assert_allclose(got[b, t, m], np.mean(probs), rtol=1e-5)


def test_class_specificity_of_ground_truth_masks_separates_classes():
  """Red object left, blue object right; each class's true mask keeps its own evidence only."""
  images = np.full((1, H, W, 3), -1.0, np.float32)
  images[0, :, :W // 2, 0] = 2.0
  images[0, :, W // 2:, 2] = 2.0
  masks = np.zeros((1, H, W, 2), np.float32)
  masks[0, :, :W // 2, 0] = 1
  masks[0, :, W // 2:, 1] = 1
  probs = metrics.class_specificity(brightness_classifier, images, masks)
  summary = metrics.class_specificity_summary(probs, np.ones((1, 2)))
  assert summary['own'] > 0.7 and summary['other'] < 0.3 and summary['num_other_pairs'] == 2
  single = metrics.class_specificity_summary(probs, np.array([[1, 0]]))
  assert math.isnan(single['other']) and single['num_other_pairs'] == 0
  np.testing.assert_allclose(single['own'], probs[0, 0, 0])


def test_rank_correlation_matches_scipy_with_ties_and_is_nan_for_constant_maps():
  stats = pytest.importorskip('scipy.stats')
  rng = np.random.default_rng(2)
  a = rng.integers(0, 5, (H, W)).astype(np.float32)  # many ties
  b = a + rng.normal(0, 2, (H, W)).astype(np.float32)
  np.testing.assert_allclose(metrics.rank_correlation(a, b),
                             stats.spearmanr(a.ravel(), b.ravel()).statistic, rtol=1e-5)
  np.testing.assert_allclose(metrics.rank_correlation(a, a), 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.rank_correlation(a, -a), -1.0, rtol=1e-6)
  assert math.isnan(float(metrics.rank_correlation(a, np.zeros_like(a))))
