"""Evaluation metrics of the paper: attribution masks against ground-truth segmentations.

Per-image functions take a `mask` (H,W) of floats in [0,1] and a binary ground truth
`seg` (H,W) (float {0,1} or bool). They are pure `jax.numpy`, jit- and vmap-able, and
return float32 scalars. Definitions follow the authors' evaluation code
(NN-Explainer, `src/evaluation/eval_utils/assessment_metrics.py`):

- Discrete metrics binarize the mask with a strict `mask > threshold`.
- "Continuous" metrics use the mask values directly as soft memberships.
- F1 and IoU are about the object (positive) class only.

Empty cases (the authors let a 1e-15 epsilon decide them; we choose instead):
- IoU and F1 when both the binarized mask and the segmentation are empty: 1 (perfect
  agreement); the authors' epsilon gives 0.
- Object coverage with an empty segmentation: 0, background coverage with a full
  segmentation: 0 (as the authors).
- ROC-AUC is undefined when the segmentation has only one class: NaN (the authors
  return None); `summarize` averages it with `nanmean`.
No other metric returns NaN for inputs in their documented ranges.

Longer than 400 lines because every metric of the evaluation, the paper's and the faithfulness
ones (insertion/deletion, pointing game, class specificity), follows the conventions above; each
is a short pure function, and one file keeps them with those conventions.
"""

from typing import Dict, Mapping, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

F1_THRESHOLDS: Sequence[float] = (0.25, 0.5, 0.75)
IOU_THRESHOLDS: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SALIENCY_AREA = 0.05


def _soft(x: chex.Array) -> jnp.ndarray:
  return jnp.asarray(x).astype(jnp.float32)


def _binary(seg: chex.Array) -> jnp.ndarray:
  return _soft(seg) > 0.5


def _check_pair(mask: chex.Array, seg: chex.Array) -> None:
  chex.assert_rank(mask, 2)
  chex.assert_equal_shape([mask, seg])


def _ratio_or(numerator: jnp.ndarray, denominator: jnp.ndarray, if_empty: float) -> jnp.ndarray:
  """numerator / denominator, or `if_empty` where the denominator is 0 (gradient-safe)."""
  nonzero = denominator > 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), if_empty)


def _count(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x, dtype=jnp.int32).astype(jnp.float32)


def continuous_iou(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """sum(min(mask, seg)) / sum(max(mask, seg)); 1 when both are all zero."""
  _check_pair(mask, seg)
  mask, seg = _soft(mask), _soft(seg)
  return _ratio_or(jnp.sum(jnp.minimum(mask, seg)), jnp.sum(jnp.maximum(mask, seg)), 1.0)


def discrete_iou(mask: chex.Array, seg: chex.Array, threshold: float) -> jnp.ndarray:
  """IoU of `mask > threshold` with the segmentation; 1 when both are empty."""
  _check_pair(mask, seg)
  predicted, actual = _soft(mask) > threshold, _binary(seg)
  return _ratio_or(_count(predicted & actual), _count(predicted | actual), 1.0)


def _f1_from_counts(tp, fp, fn) -> jnp.ndarray:
  # 2PR/(P+R) written as 2TP/(2TP+FP+FN): equal whenever defined, and no 0/0 inside.
  return _ratio_or(2.0 * tp, 2.0 * tp + fp + fn, 1.0)


def discrete_f1(mask: chex.Array, seg: chex.Array, threshold: float) -> jnp.ndarray:
  """F1 of the object class for `mask > threshold`; 1 when both are empty."""
  _check_pair(mask, seg)
  predicted, actual = _soft(mask) > threshold, _binary(seg)
  return _f1_from_counts(
      _count(predicted & actual), _count(predicted & ~actual), _count(~predicted & actual))


def soft_f1(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """Continuous F1: true/false positives and false negatives counted with mask values."""
  _check_pair(mask, seg)
  mask, seg = _soft(mask), _soft(seg)
  return _f1_from_counts(
      jnp.sum(mask * seg), jnp.sum(mask * (1.0 - seg)), jnp.sum((1.0 - mask) * seg))


def soft_accuracy(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """Continuous accuracy: mean of mask*seg + (1-mask)*(1-seg)."""
  _check_pair(mask, seg)
  mask, seg = _soft(mask), _soft(seg)
  return jnp.mean(mask * seg + (1.0 - mask) * (1.0 - seg))


def _pairs_won(bits, positive, positives_first_in_ties):
  """Number of (object, background) pixel pairs where the object pixel scores higher,
  or the same unless `positives_first_in_ties`. `bits`: int32 bits of scores in [0, 1]."""
  # One int32 sort key per pixel: the score's float bits (order-preserving for
  # scores in [0, 1], < 2**30) shifted left, the tie-break bit in the lowest place
  # (bit 1 sorts later). XLA:CPU sorts int32 several times faster than float32.
  tie_break = ~positive if positives_first_in_ties else positive
  ordered = jnp.sort((bits << 1) | tie_break.astype(jnp.int32))
  is_negative = (ordered & 1) == (1 if positives_first_in_ties else 0)
  negatives_so_far = jnp.cumsum(is_negative, dtype=jnp.int32)
  num_pixels = positive.size
  if (num_pixels // 2) * (num_pixels - num_pixels // 2) < 2**31:  # static: no int32 overflow
    # Exact, so that a perfect or a constant mask scores exactly 1 or 1/2.
    return jnp.sum(jnp.where(is_negative, 0, negatives_so_far), dtype=jnp.int32).astype(jnp.float32)
  # Larger images (over ~300x300): a float32 sum of per-pixel fractions in [0, 1],
  # which keeps its relative precision where a sum of large counts would not.
  num_negative = jnp.maximum(_count(is_negative), 1.0)
  return num_negative * jnp.sum(jnp.where(is_negative, 0.0, negatives_so_far / num_negative))


def auc(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """ROC-AUC of the mask values as scores for the segmentation labels.

  Equals the Mann-Whitney statistic: the fraction of (object, background) pixel
  pairs where the object pixel scores higher, ties counting 1/2. NaN when the
  segmentation is all 0 or all 1 (the AUC is undefined there). Scores are clipped
  to [0, 1] (a NaN score counts as 0).
  """
  _check_pair(mask, seg)
  scores = _soft(mask).ravel()
  scores = jnp.minimum(jnp.where(scores > 0, scores, 0.0), 1.0)  # also turns -0.0 into 0.0
  bits = jax.lax.bitcast_convert_type(scores, jnp.int32)
  positive = _binary(seg).ravel()
  num_positive = _count(positive)
  num_negative = positive.size - num_positive
  # Ties broken both ways: pairs won outright, and won or tied; their mean counts ties 1/2.
  pairs_won = _pairs_won(bits, positive, True) + _pairs_won(bits, positive, False)
  num_pairs = num_positive * num_negative  # 0 exactly when the AUC is undefined
  return _ratio_or(pairs_won, 2.0 * num_pairs, jnp.nan)


def saliency(mask: chex.Array, class_prob: chex.Numeric) -> jnp.ndarray:
  """log(max(mean(mask), 0.05)) - log(class_prob): lower is better.

  `class_prob` is the classifier's probability of the explained class(es) for the
  kept image `mask * x` (the authors: softmax, summed over the target classes).
  It is floored at the smallest normal float32 so that 0 stays finite.
  """
  chex.assert_rank(mask, 2)
  area = jnp.maximum(jnp.mean(_soft(mask)), MIN_SALIENCY_AREA)
  prob = jnp.maximum(_soft(class_prob), jnp.finfo(jnp.float32).tiny)
  return jnp.log(area) - jnp.log(prob)


def mask_coverage(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """Share of the object covered by the mask: 1 - mean(relu(seg - mask)) / mean(seg).

  Soft recall of the object; 0 when the segmentation is empty.
  """
  _check_pair(mask, seg)
  mask, seg = _soft(mask), _soft(seg)
  # 1 - sum(relu(seg - mask)) / sum(seg) == sum(min(seg, mask)) / sum(seg) for seg in [0,1];
  # the second form is exactly 0 for an empty mask (no float cancellation).
  covered = jnp.sum(jnp.minimum(seg, mask))
  return _ratio_or(covered, jnp.sum(seg), 0.0)


def background_coverage(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """Share of the background covered by the mask: mean(relu(mask - seg)) / (1 - mean(seg)).

  Soft false-positive rate; 0 when the segmentation covers the whole image.
  """
  _check_pair(mask, seg)
  mask, seg = _soft(mask), _soft(seg)
  spilled = jnp.sum(jnp.maximum(mask - seg, 0.0))
  return _ratio_or(spilled, jnp.sum(1.0 - seg), 0.0)


def overlap(mask: chex.Array, seg: chex.Array) -> jnp.ndarray:
  """1 - mean|seg - mask|."""
  _check_pair(mask, seg)
  return 1.0 - jnp.mean(jnp.abs(_soft(seg) - _soft(mask)))


def _threshold_key(prefix: str, threshold: float) -> str:
  return f'{prefix}@{threshold:g}'


def metric_names(with_saliency: bool = False) -> list:
  """The keys of `score_masks` and `summarize`, in documentation order."""
  names = [_threshold_key('f1', t) for t in F1_THRESHOLDS]
  names += ['mean_f1', 'cont_f1', 'accuracy']
  names += [_threshold_key('iou', t) for t in IOU_THRESHOLDS]
  names += ['cont_iou', 'auc', 'overlap', 'object_coverage', 'background_coverage']
  return names + (['saliency'] if with_saliency else [])


def _at_thresholds(metric, mask, seg, thresholds):
  # One vectorized pass over all thresholds: smaller program, faster to compile.
  return jax.vmap(metric, in_axes=(None, None, 0))(mask, seg, jnp.asarray(thresholds))


def _score_image(mask, seg, class_prob) -> Dict[str, jnp.ndarray]:
  f1s = _at_thresholds(discrete_f1, mask, seg, F1_THRESHOLDS)
  ious = _at_thresholds(discrete_iou, mask, seg, IOU_THRESHOLDS)
  scores = {_threshold_key('f1', t): f1s[i] for i, t in enumerate(F1_THRESHOLDS)}
  scores['mean_f1'] = jnp.mean(f1s)
  scores['cont_f1'] = soft_f1(mask, seg)
  scores['accuracy'] = soft_accuracy(mask, seg)
  scores.update({_threshold_key('iou', t): ious[i] for i, t in enumerate(IOU_THRESHOLDS)})
  scores['cont_iou'] = continuous_iou(mask, seg)
  scores['auc'] = auc(mask, seg)
  scores['overlap'] = overlap(mask, seg)
  scores['object_coverage'] = mask_coverage(mask, seg)
  scores['background_coverage'] = background_coverage(mask, seg)
  if class_prob is not None:
    scores['saliency'] = saliency(mask, class_prob)
  return scores


@jax.jit
def _score_batch(masks, segs, class_probs):
  in_axes = (0, 0, None if class_probs is None else 0)
  return jax.vmap(_score_image, in_axes=in_axes)(masks, segs, class_probs)


def score_masks(masks: chex.Array, segs: chex.Array,
                class_probs: Optional[chex.Array] = None) -> Dict[str, jnp.ndarray]:
  """Every metric for each image: masks (N,H,W) in [0,1], segs (N,H,W) binary.

  `class_probs` (N,): the explained classes' probability for each kept image; the
  'saliency' key is present iff it is given. Returns {name: (N,) float32}.
  """
  chex.assert_rank(masks, 3)
  chex.assert_equal_shape([masks, segs])
  masks, segs = _soft(masks), _soft(segs)
  if class_probs is not None:
    chex.assert_shape(class_probs, (masks.shape[0],))
    class_probs = _soft(class_probs)
  return _score_batch(masks, segs, class_probs)


def summarize(per_image: Mapping[str, chex.Array]) -> Dict[str, float]:
  """Mean over images of each metric (NaN-ignoring for 'auc'), as Python floats.

  'auc' is NaN only if no image has both object and background pixels.
  """
  summary = {}
  for name, values in per_image.items():
    values = np.asarray(values, dtype=np.float64)
    if name == 'auc':
      defined = values[~np.isnan(values)]
      summary[name] = float(defined.mean()) if defined.size else float('nan')
    else:
      summary[name] = float(values.mean())
  return summary


def merge_class_masks(class_masks: chex.Array, targets: chex.Array) -> jnp.ndarray:
  """Pixel-wise max of the masks of the target classes: (B,H,W,C), (B,C) -> (B,H,W).

  Images without a target class get an all-zero mask (masks are in [0,1]).
  """
  chex.assert_rank([class_masks, targets], [4, 2])
  chex.assert_equal_shape_prefix([class_masks, targets], 1)
  chex.assert_equal_shape_suffix([class_masks, targets], 1)
  is_target = _soft(targets)[:, None, None, :] > 0.5
  return jnp.max(jnp.where(is_target, class_masks, 0.0), axis=-1)


def reference_masks(segs: chex.Array) -> Dict[str, jnp.ndarray]:
  """The paper's reference masks for segs (N,H,W): all 0, all 0.5, all 1, ground truth."""
  chex.assert_rank(segs, 3)
  segs = _soft(segs)
  return {
      'all_0': jnp.zeros_like(segs),
      'all_0.5': jnp.full_like(segs, 0.5),
      'all_1': jnp.ones_like(segs),
      'ground_truth': segs,
  }


# ----------------------------------------------------------------------------------------------
# Metrics that query the classifier, and the sanity check. `classify` maps images (N,H,W,3) to
# class probabilities (N,C) with JAX operations (so that these functions can be jitted).


def _reveal_counts(num_pixels: int, num_steps: int) -> np.ndarray:
  return np.round(np.arange(num_steps + 1) * num_pixels / num_steps).astype(np.int32)


def saliency_ranks(saliency: chex.Array) -> jnp.ndarray:
  """(P,H,W) maps -> (P,H*W) int32 rank of each pixel, 0 = most salient (ties: raster order)."""
  chex.assert_rank(saliency, 3)
  flat = _soft(saliency).reshape(saliency.shape[0], -1)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def _trapezoid_mean(curves: jnp.ndarray) -> jnp.ndarray:
  """Area under curves (..., S+1) sampled evenly on [0,1]."""
  return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / (curves.shape[-1] - 1)


def insertion_deletion(classify, images: chex.Array, saliency: chex.Array,
                       class_index: chex.Array, *, num_steps: int = 16,
                       deletion_baseline: Optional[chex.Array] = None,
                       insertion_baseline: Optional[chex.Array] = None) -> Dict[str, jnp.ndarray]:
  """Insertion and deletion AUCs of Petsiuk et al. (RISE) for P (image, class) pairs.

  images (P,H,W,3), saliency (P,H,W), class_index (P,) int. Pixels are taken in decreasing
  saliency order, round(k*HW/num_steps) of them at step k = 0..num_steps. Deletion replaces
  them with `deletion_baseline` (default zeros: the mean colour of normalized images) and
  records the class's probability; insertion starts from `insertion_baseline` (default zeros;
  the RISE paper uses a blurred image) and puts them back. The AUCs are trapezoid means over
  the fraction of pixels on [0,1]: higher insertion and lower deletion are better. Returns
  {'insertion', 'deletion'}: (P,), and {'insertion_curve', 'deletion_curve'}: (P, num_steps+1).
  """
  chex.assert_rank([images, saliency, class_index], [4, 3, 1])
  chex.assert_equal_shape_prefix([images, saliency, class_index], 1)
  chex.assert_equal(images.shape[1:3], saliency.shape[1:])
  images = _soft(images)
  zeros = jnp.zeros_like(images)
  deletion_baseline = zeros if deletion_baseline is None else _soft(deletion_baseline)
  insertion_baseline = zeros if insertion_baseline is None else _soft(insertion_baseline)
  num_pairs = images.shape[0]
  ranks = saliency_ranks(saliency).reshape(saliency.shape)
  counts = jnp.asarray(_reveal_counts(saliency.shape[1] * saliency.shape[2], num_steps))

  def probabilities_at(count):
    moved = (ranks < count)[..., None]
    deleted = jnp.where(moved, deletion_baseline, images)
    inserted = jnp.where(moved, images, insertion_baseline)
    probs = classify(jnp.concatenate([deleted, inserted]))
    picked = jnp.take_along_axis(probs, jnp.tile(class_index, 2)[:, None], axis=-1)[:, 0]
    return picked.reshape(2, num_pairs)

  curves = jax.lax.map(probabilities_at, counts)  # (S+1, 2, P)
  deletion_curve, insertion_curve = curves[:, 0].T, curves[:, 1].T
  return {'insertion': _trapezoid_mean(insertion_curve),
          'deletion': _trapezoid_mean(deletion_curve),
          'insertion_curve': insertion_curve, 'deletion_curve': deletion_curve}


def mass_shares(saliency: chex.Array, regions: chex.Array) -> jnp.ndarray:
  """Share of a map's total mass that lies in each region: saliency (H,W) >= 0, regions (R,H,W)
  in {0,1} -> (R,) in [0,1] (all 0 for an all-zero map). The planted-shortcut benchmark compares
  the share on the cue with the share on the object."""
  chex.assert_rank([saliency, regions], [2, 3])
  chex.assert_equal(saliency.shape, regions.shape[1:])
  saliency = jnp.maximum(_soft(saliency), 0.0)
  total = saliency.sum()
  inside = (_binary(regions) * saliency).sum(axis=(1, 2))
  return jnp.where(total > 0, inside / jnp.maximum(total, 1e-12), 0.0)


def pointing_game_hit(saliency: chex.Array, seg: chex.Array, tolerance: float = 0.0) -> jnp.ndarray:
  """Pointing game (Zhang et al. 2016): 1 if the saliency maximum (first in raster order on
  ties) lies within `tolerance` pixels (Euclidean) of the object, else 0 (also for an empty
  segmentation: count only classes present in the image)."""
  _check_pair(saliency, seg)
  height, width = saliency.shape
  peak = jnp.argmax(_soft(saliency).ravel())
  row, col = peak // width, peak % width
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  near = (rows - row) ** 2 + (cols - col) ** 2 <= tolerance ** 2
  return jnp.any(near & _binary(seg)).astype(jnp.float32)


def class_specificity(classify, images: chex.Array, class_masks: chex.Array,
                      thresholds: Sequence[float] = IOU_THRESHOLDS) -> jnp.ndarray:
  """Probability of each class when keeping the mask of each class (the authors' notebook).

  images (B,H,W,3), per-class masks (B,H,W,C) in [0,1] -> (B,C,C) where [b, t, m] is the
  probability of class t for image b with only the pixels where the mask of class m exceeds
  a threshold kept (the rest set to 0), averaged over `thresholds` (the notebook's 0.1..0.9).
  A class-specific explanation gives a high [b, t, t] and a low [b, t, m != t].
  """
  chex.assert_rank([images, class_masks], [4, 4])
  chex.assert_equal_shape_prefix([images, class_masks], 3)
  images, class_masks = _soft(images), _soft(class_masks)
  b, h, w, c = class_masks.shape

  def at_threshold(threshold):
    keep = (class_masks > threshold).astype(images.dtype)  # (B,H,W,M)
    kept = jnp.moveaxis(keep, -1, 1)[..., None] * images[:, None]  # (B,M,H,W,3)
    probs = classify(kept.reshape((b * c, h, w, 3))).reshape(b, c, -1)  # (B,M,T)
    return jnp.swapaxes(probs, 1, 2)  # (B,T,M)

  return jax.lax.map(at_threshold, jnp.asarray(thresholds, jnp.float32)).mean(0)


def class_specificity_summary(probabilities: chex.Array, labels: chex.Array) -> Dict[str, float]:
  """Means over images of `class_specificity` output (B,C,C) for the classes present (labels (B,C)).

  'own': probability of a present class t keeping its own mask, over (image, t) pairs;
  'other': probability of a present class t keeping the mask of another present class m,
  over (image, t, m != t) triples (only images with >= 2 classes); NaN when there is none.
  """
  probabilities = np.asarray(probabilities, np.float64)
  present = np.asarray(labels) > 0.5
  num_classes = present.shape[-1]
  pairs = present[:, :, None] & present[:, None, :]
  diagonal = np.eye(num_classes, dtype=bool)[None]
  own, other = pairs & diagonal, pairs & ~diagonal
  mean = lambda where: float(probabilities[where].mean()) if where.any() else float('nan')
  return {'own': mean(own), 'other': mean(other), 'num_other_pairs': int(other.sum())}


def _average_ranks(x: jnp.ndarray) -> jnp.ndarray:
  ordered = jnp.sort(x)
  left = jnp.searchsorted(ordered, x, side='left')
  right = jnp.searchsorted(ordered, x, side='right')
  return (left + right - 1).astype(jnp.float32) / 2.0


def rank_correlation(a: chex.Array, b: chex.Array) -> jnp.ndarray:
  """Spearman rank correlation of two maps of the same shape (ties get average ranks).

  The model-randomization sanity check (Adebayo et al. 2018) compares a method's maps for the
  trained and the randomized classifier: a high correlation means the explanation ignores the
  weights. NaN when either map is constant (no ranking to compare).
  """
  chex.assert_equal_shape([a, b])
  ra, rb = _average_ranks(_soft(a).ravel()), _average_ranks(_soft(b).ravel())
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denominator = jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))
  return _ratio_or(jnp.sum(ra * rb), denominator, jnp.nan)
