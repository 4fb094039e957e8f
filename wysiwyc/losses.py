"""Loss functions of the Explainer and its baselines (DESIGN.md section 1).

Longer than 400 lines because every loss term (the paper's, the baselines' and the non-paper
options beside them) is kept here, pure and side by side, where the tests check them.

All functions are pure, NHWC with the class axis last, jit-compatible and
differentiable. `min_area` and `max_area` must be Python floats (they fix the
reference masks); loss weights may be Python floats or traced scalars. Every term
is finite, so a weight of 0 removes the term and its gradient exactly.
"""

import math
from typing import Callable, Optional

import chex
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Classify = Callable[[Array], Array]  # images (N,H,W,3) -> logits (N,C)
Segment = Callable[[Array], Array]  # images (N,H,W,3) -> segmentation logits (N,H,W,C)


def extract_masks(segmentations: Array, targets: Array) -> tuple[Array, Array]:
  """Target and non-target masks, each (B,H,W) in [0,1].

  target_mask = sigmoid(max over target classes of the logits), non_target_mask
  likewise over the other classes. An empty class set gives a mask of zeros.
  """
  chex.assert_rank(segmentations, 4)
  chex.assert_rank(targets, 2)
  chex.assert_equal((segmentations.shape[0], segmentations.shape[-1]), targets.shape)
  is_target = (targets > 0.5)[:, None, None, :]

  def max_sigmoid(selected):
    # -inf for unselected classes: max over an empty set is -inf, sigmoid(-inf) = 0,
    # and neither value nor gradient is NaN.
    logits = jnp.where(selected, segmentations, -jnp.inf)
    return jax.nn.sigmoid(jnp.max(logits, axis=-1))

  return max_sigmoid(is_target), max_sigmoid(~is_target)


def classification_loss(logits: Array, targets: Array, multilabel: bool = True) -> Array:
  """Mean sigmoid BCE (multi-label) or softmax CE against argmax(targets)."""
  chex.assert_equal_shape([logits, targets])
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
  labels = jnp.argmax(targets, axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def entropy_loss(logits: Array) -> Array:
  """Negative mean entropy of softmax(logits) over batch and classes (min: uniform)."""
  probs = jnp.clip(jax.nn.softmax(logits, axis=-1), 1e-16)
  return jnp.mean(probs * jnp.log(probs))


def total_variation(mask: Array, squared: bool = False) -> Array:
  """Mean over (B,H,W) of the right plus down neighbour differences of `mask`.

  The last column (row) has no right (down) neighbour; like the authors'
  reflect-padded convolution it is compared with column W-2 (row H-2) instead.
  `squared` squares the differences (Real-Time Saliency), else takes |.|.
  """
  chex.assert_rank(mask, 3)
  penalty = jnp.square if squared else jnp.abs

  def reflected_diffs(axis):
    diffs = penalty(jnp.diff(mask, axis=axis))  # length n-1 along `axis`
    last = jax.lax.slice_in_dim(diffs, -1, None, axis=axis)  # |a[n-1] - a[n-2]|
    return jnp.concatenate([diffs, last], axis=axis)

  return jnp.mean(reflected_diffs(2) + reflected_diffs(1))


def _kth_largest(values: Array, k: int) -> Array:
  """Exact k-th largest entry along the last axis of non-negative float32 `values`.

  Bisection on the IEEE bit patterns (monotonic for non-negative floats): 32 rounds of
  compare-and-count, much cheaper on CPU than sorting every row.
  """
  bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
  lo = jnp.zeros(values.shape[:-1], jnp.int32)  # count(bits >= lo) >= k
  hi = bits.max(axis=-1) + 1  # count(bits >= hi) < k

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits >= mid[..., None], axis=-1) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _top_k_sum(values: Array, k: int) -> Array:
  """Sum of the k largest entries along the last axis (entries >= 0), differentiable.

  The gradient is 1 on the k largest entries; entries tied with the k-th share what is left.
  """
  threshold = jax.lax.stop_gradient(_kth_largest(values, k))[..., None]
  above = values > threshold
  ties = values == threshold
  num_above = above.sum(axis=-1, keepdims=True)
  tie_share = (k - num_above) / jnp.maximum(ties.sum(axis=-1, keepdims=True), 1)
  weights = jax.lax.stop_gradient(jnp.where(above, 1.0, jnp.where(ties, tie_share, 0.0)))
  return jnp.sum(weights * values, axis=-1)


def class_mask_area_loss(segmentations: Array, targets: Array, min_area: float,
                         max_area: float) -> Array:
  """Area constraint on the class masks of each image's target classes.

  Per (image, target class): sort sigmoid(S_c) descending, mean over pixels of
  relu(r_min - sorted) + relu(sorted - r_max); summed over the image's target
  classes, then averaged over the batch. Uses the real H*W.

  r_min is 1 on the first k_min = floor(HW*min_area) sorted pixels and 0 after, so (masks
  lying in [0, 1]) the sum is k_min - top_k_min_sum + (total - top_k_max_sum): the same
  number without sorting.
  """
  chex.assert_rank(segmentations, 4)
  chex.assert_equal((segmentations.shape[0], segmentations.shape[-1]), targets.shape)
  if not 0.0 <= min_area <= max_area <= 1.0:
    raise ValueError(f'need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}')
  b, h, w, c = segmentations.shape
  num_pixels = h * w
  masks = jax.nn.sigmoid(segmentations).reshape(b, num_pixels, c).transpose(0, 2, 1)
  per_class = jnp.zeros((b, c), jnp.float32)
  k_min, k_max = int(num_pixels * min_area), int(num_pixels * max_area)
  if min_area > 0.0 and k_min > 0:
    per_class += k_min - _top_k_sum(masks, k_min)
  if max_area < 1.0:
    per_class += masks.sum(axis=-1) - (_top_k_sum(masks, k_max) if k_max else 0.0)
  per_class /= num_pixels
  return jnp.sum(per_class * (targets > 0.5), axis=-1).mean()


def class_overlap_loss(segmentations: Array, targets: Array) -> Array:
  """Mean over B,H,W of (sum - max) of the target classes' masks: 0 when at most one target
  class claims each pixel. NOT in the paper (an ablation of class specificity)."""
  chex.assert_rank(segmentations, 4)
  chex.assert_equal((segmentations.shape[0], segmentations.shape[-1]), targets.shape)
  is_target = (targets > 0.5)[:, None, None, :]
  masks = jax.nn.sigmoid(segmentations)
  claimed = jnp.where(is_target, masks, 0.0)
  return (claimed.sum(axis=-1) - claimed.max(axis=-1)).mean()


def pooled_class_loss(segmentations: Array, targets: Array, sharpness: float = 1.0,
                      multilabel: bool = True) -> Array:
  """Classification of the labels by each class channel's own spatial pooling: the
  self-explainer's signal (logits = pooled masks), NOT in the paper.

  pooled_c = logsumexp over H,W of (sharpness * S_c) / sharpness - log(H*W) / sharpness, a
  log-mean-exp pooling: the mean of S_c as sharpness -> 0, its max as sharpness -> inf. At
  sharpness 1 a channel scores a class present when a part of the image is confidently in its
  mask (a 10% region at logit +5, the rest at -5, pools to +2.7), which the area terms allow,
  whereas the mean asks most of the image to be in the mask. Loss: `classification_loss` of the
  pooled logits against `targets`.
  """
  chex.assert_rank(segmentations, 4)
  chex.assert_equal((segmentations.shape[0], segmentations.shape[-1]), targets.shape)
  if sharpness <= 0:
    raise ValueError(f'pooled_class_loss needs sharpness > 0, got {sharpness}')
  b, h, w, c = segmentations.shape
  flat = segmentations.astype(jnp.float32).reshape(b, h * w, c)
  pooled = (jax.nn.logsumexp(sharpness * flat, axis=1) - math.log(h * w)) / sharpness
  return classification_loss(pooled, targets.astype(jnp.float32), multilabel)


def distillation_loss(student_logits: Array, teacher_logits: Array,
                      multilabel: bool = True) -> Array:
  """Cross-entropy of the student's predictions against the teacher's soft predictions: mean
  sigmoid BCE against sigmoid(teacher) (multi-label), or softmax CE against softmax(teacher).
  The black-box start's objective (`stages.distill_stage`); NOT in the paper."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  if multilabel:
    soft_targets = jax.nn.sigmoid(teacher_logits)
    return optax.sigmoid_binary_cross_entropy(student_logits, soft_targets).mean()
  return optax.softmax_cross_entropy(student_logits, jax.nn.softmax(teacher_logits)).mean()


def explainer_loss(segmentations: Array, images: Array, targets: Array, classify: Classify, *,
                   lambda_c: float = 1.0, lambda_e: float = 1.0, lambda_tv: float = 1.0,
                   lambda_ac: float = 1.0, lambda_t: float = 0.1, lambda_nt: float = 0.3,
                   min_area: float = 0.05, max_area: float = 0.3, lambda_single: float = 0.0,
                   lambda_overlap: float = 0.0, lambda_pooled: float = 0.0,
                   pooled_sharpness: float = 1.0, multilabel: bool = True,
                   binary_masks: bool = False, fill: str = 'zeros',
                   fill_blur_sigma: float = 0.125) -> tuple[Array, dict[str, Array]]:
  """The Explainer's loss (Stalder et al. 2022). Returns (total, unweighted terms).

  With `lambda_single = lambda_overlap = lambda_pooled = 0` and `binary_masks=False` (the
  defaults) it is the paper's loss. These weigh terms that are NOT in the paper, aimed at class
  specificity: `lambda_single` the classification of the image kept by one target class's own
  mask against that class alone (one more classifier pass), `lambda_overlap` the overlap of the
  target classes' masks (`class_overlap_loss`), `lambda_pooled` the labels' classification by
  each class channel's pooling (`pooled_class_loss` at `pooled_sharpness`).

  `binary_masks` (NOT in the paper): the classifier sees the images masked by the masks
  thresholded at 0.5 (`straight_through_binary`), the gradient flowing as through the soft
  masks. A classifier that normalizes each image (or each patch) reads a faint mask's image
  `0.05 * x` as `x`; with binary masks a pixel is kept whole or not at all.

  `fill` (NOT in the paper when not 'zeros'): what replaces the removed pixels of the kept and
  dropped images; 'blur' puts the image blurred by a Gaussian of `fill_blur_sigma` times its
  side there (`blurred_images`), so that a faint mask keeps a blurred image, not a faint copy.
  """
  chex.assert_rank([segmentations, images, targets], [4, 4, 2])
  chex.assert_equal(segmentations.shape[:3], images.shape[:3])
  segmentations = segmentations.astype(jnp.float32)  # losses in f32 under mixed precision
  target_mask, non_target_mask = extract_masks(segmentations, targets)
  seen = straight_through_binary if binary_masks else (lambda mask: mask)
  if fill not in ('zeros', 'blur'):
    raise ValueError(f"fill must be 'zeros' or 'blur' ('auto' is resolved by the Explainer stage, "
                     f'stages.auto_fill), got {fill!r}')
  filler = (jax.lax.stop_gradient(blurred_images(images, fill_blur_sigma)) if fill == 'blur'
            else jnp.zeros_like(images))
  keep = seen(target_mask)[..., None]
  batches = [keep * images + (1.0 - keep) * filler, (1.0 - keep) * images + keep * filler]
  # A weight known to be 0 skips the extra classifier pass (a traced weight computes it).
  single = not (isinstance(lambda_single, (int, float)) and lambda_single == 0)
  if single:
    single_class, single_mask = _largest_target_class_mask(segmentations, targets)
    single_keep = seen(single_mask)[..., None]
    batches.append(single_keep * images + (1.0 - single_keep) * filler)
  logits = jnp.split(classify(jnp.concatenate(batches)).astype(jnp.float32), len(batches))
  aux = {
      'classification': classification_loss(logits[0], targets, multilabel),
      'entropy': entropy_loss(logits[1]),
      'tv': total_variation(target_mask) + total_variation(non_target_mask),
      'area_class': class_mask_area_loss(segmentations, targets, min_area, max_area),
      'area_target': target_mask.mean(),
      'area_non_target': non_target_mask.mean(),
      'single_class': (_single_class_loss(logits[2], single_class, targets, multilabel)
                       if single else jnp.zeros((), jnp.float32)),
      'class_overlap': class_overlap_loss(segmentations, targets),
      'pooled_class': pooled_class_loss(segmentations, targets, pooled_sharpness, multilabel),
  }
  weights = {'classification': lambda_c, 'entropy': lambda_e, 'tv': lambda_tv,
             'area_class': lambda_ac, 'area_target': lambda_t, 'area_non_target': lambda_nt,
             'single_class': lambda_single, 'class_overlap': lambda_overlap,
             'pooled_class': lambda_pooled}
  return _weighted_total(aux, weights)


def blurred_images(images: Array, sigma_fraction: float) -> Array:
  """`images` blurred by a separable Gaussian of std `sigma_fraction` times each side, the kernel
  renormalized at the borders (no darkening)."""
  _, h, w, _ = images.shape

  def blur_matrix(n):
    sigma = max(sigma_fraction * n, 1e-3)
    distance = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
    band = jnp.exp(-0.5 * (distance / sigma) ** 2)
    return band / band.sum(axis=1, keepdims=True)

  return jnp.einsum('ik,bklc,jl->bijc', blur_matrix(h), images, blur_matrix(w))


def straight_through_binary(mask: Array) -> Array:
  """`mask > 0.5` as 0/1 in the forward pass, the identity's gradient in the backward pass."""
  return mask + jax.lax.stop_gradient((mask > 0.5).astype(mask.dtype) - mask)


def _largest_target_class_mask(segmentations: Array, targets: Array) -> tuple[Array, Array]:
  """Per image, the target class whose mask is largest (B,) and that mask (B,H,W)."""
  masks = jax.nn.sigmoid(segmentations)
  areas = jnp.where(targets > 0.5, masks.mean(axis=(1, 2)), -1.0)
  chosen = jnp.argmax(jax.lax.stop_gradient(areas), axis=-1)
  return chosen, jnp.take_along_axis(masks, chosen[:, None, None, None], axis=-1)[..., 0]


def _single_class_loss(logits: Array, chosen: Array, targets: Array, multilabel: bool) -> Array:
  """Classification of the image kept by one target class's own mask against that class
  alone, over the images that have a target class: rewards a class mask that leaves out the
  other classes present. Not in the paper (ablation of class specificity).

  Multi-label: the binary cross-entropy is averaged over the image's target classes only (the
  chosen one present, the other targets absent): classes absent from the image are absent from
  any kept part of it, and counting them would reward an empty mask.
  """
  one_hot = jax.nn.one_hot(chosen, targets.shape[-1], dtype=jnp.float32)
  if multilabel:
    is_target = (targets > 0.5).astype(jnp.float32)
    per_class = optax.sigmoid_binary_cross_entropy(logits, one_hot) * is_target
    per_image = per_class.sum(axis=-1) / jnp.maximum(is_target.sum(axis=-1), 1.0)
  else:
    per_image = optax.softmax_cross_entropy(logits, one_hot)
  has_target = (targets > 0.5).any(axis=-1)
  return jnp.sum(per_image * has_target) / jnp.maximum(has_target.sum(), 1)


def real_time_saliency_loss(segmentations: Array, images: Array, targets: Array,
                            classify: Classify, *, lambda_tv: float = 10.0,
                            lambda_area: float = 1.0, lambda_preserve: float = 1.0,
                            lambda_destroy: float = 5.0, destroyer_power: float = 0.3,
                            alternative_images: Optional[Array] = None
                            ) -> tuple[Array, dict[str, Array]]:
  """Real-Time Saliency baseline loss (Dabkowski & Gal, as adapted by the authors).

  total = lambda_tv*TVsq(m) + lambda_area*mean(m) + lambda_preserve*preserver
          + lambda_destroy*destroyer**destroyer_power
  preserver = mean over (image, target class) pairs of -log sigmoid(logit of the kept
  image), destroyer = the same mean of sigmoid(logit of the dropped image). The
  masked-out pixels are replaced by `alternative_images` (zeros if None, as in
  DESIGN.md; the authors use `saliency_alternative_images`). aux['destroyer'] is the
  mean before the power.
  """
  chex.assert_rank([segmentations, images, targets], [4, 4, 2])
  chex.assert_equal(segmentations.shape[:3], images.shape[:3])
  target_mask, _ = extract_masks(segmentations.astype(jnp.float32), targets)
  keep = target_mask[..., None]
  alt = jnp.zeros_like(images) if alternative_images is None else alternative_images
  chex.assert_equal_shape([images, alt])
  kept = keep * images + (1.0 - keep) * alt
  dropped = (1.0 - keep) * images + keep * alt
  logits = classify(jnp.concatenate([kept, dropped])).astype(jnp.float32)
  logits_keep, logits_drop = jnp.split(logits, 2)
  is_target = (targets > 0.5).astype(logits_keep.dtype)
  num_pairs = jnp.maximum(is_target.sum(), 1.0)  # no target in the batch -> terms are 0
  destroyer = jnp.sum(jax.nn.sigmoid(logits_drop) * is_target) / num_pairs
  aux = {
      'tv': total_variation(target_mask, squared=True),
      'area': target_mask.mean(),
      'preserver': -jnp.sum(jax.nn.log_sigmoid(logits_keep) * is_target) / num_pairs,
      'destroyer': destroyer,
  }
  # Floor keeps d**0.3 and its gradient finite when the destroyer is exactly 0.
  destroyer_term = jnp.maximum(destroyer, 1e-12) ** destroyer_power
  total = (lambda_tv * aux['tv'] + lambda_area * aux['area']
           + lambda_preserve * aux['preserver'] + lambda_destroy * destroyer_term)
  return total, {**aux, 'loss': total}


def saliency_alternative_images(rng: Array, images: Array, sigma: float = 10.0) -> Array:
  """The authors' Real-Time Saliency background: blur or colour noise (50/50 per batch).

  Blur: separable Gaussian (sigma 10, radius ceil(4 sigma), zero padding). Colour:
  N(0.11, 1) pixel noise plus a uniform(-0.33, 0.33) offset per image and channel
  (torch `normal_(0.11)` sets the mean, not the std).
  """
  b, h, w, c = images.shape
  choice_rng, noise_rng, colour_rng = jax.random.split(rng, 3)
  radius = math.ceil(4 * sigma)

  def gaussian(offsets):
    return jnp.exp(-(offsets / (math.sqrt(2) * sigma + 1.1920929e-07)) ** 2)

  def blur_matrix(n):  # (n,n) band: zero-padded 1-D convolution with the normalized kernel
    distance = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
    band = jnp.where(jnp.abs(distance) <= radius, gaussian(distance), 0.0)
    return band / gaussian(jnp.arange(-radius, radius + 1)).sum()

  blurred = jnp.einsum('ik,bklc,jl->bijc', blur_matrix(h), images, blur_matrix(w))
  colour = (jax.random.normal(noise_rng, images.shape) + 0.11
            + jax.random.uniform(colour_rng, (b, 1, 1, c), minval=-0.33, maxval=0.33))
  return jnp.where(jax.random.bernoulli(choice_rng), blurred, colour).astype(images.dtype)


def self_explainer_loss(segment: Segment, images: Array, targets: Array, *,
                        lambda_c: float = 1.0, lambda_similarity: float = 1.0,
                        lambda_tv: float = 1.0, lambda_ac: float = 1.0, lambda_t: float = 0.1,
                        lambda_nt: float = 0.3, lambda_coherency: float = 1.0,
                        min_area: float = 0.05, max_area: float = 0.3,
                        multilabel: bool = True) -> tuple[Array, dict[str, Array]]:
  """Self-explaining classifier loss (the authors' InterpretableFCNN).

  One network gives masks S and logits mean_{H,W}(S). Teacher pass on x, student
  pass on m_t * x (gradient flows through m_t, as in the authors' code). Terms:
  classification of teacher and student, logit similarity mean|l_t - l_s|, TV of
  both target masks, area terms of both passes, coherency mean|m_t - m_s|.
  """
  chex.assert_rank([images, targets], [4, 2])

  def one_pass(x):
    segmentations = segment(x).astype(jnp.float32)
    chex.assert_equal(segmentations.shape[:3], x.shape[:3])
    target_mask, non_target_mask = extract_masks(segmentations, targets)
    return segmentations, target_mask, non_target_mask, segmentations.mean(axis=(1, 2))

  seg_t, mask_t, nc_mask_t, logits_t = one_pass(images)
  seg_s, mask_s, nc_mask_s, logits_s = one_pass(mask_t[..., None] * images)
  aux = {
      'classification_teacher': classification_loss(logits_t, targets, multilabel),
      'classification_student': classification_loss(logits_s, targets, multilabel),
      'similarity': jnp.abs(logits_t - logits_s).mean(),
      # The authors smooth only the target masks here (the Explainer smooths both).
      'tv': total_variation(mask_t) + total_variation(mask_s),
      'area_class': (class_mask_area_loss(seg_t, targets, min_area, max_area)
                     + class_mask_area_loss(seg_s, targets, min_area, max_area)),
      'area_target': mask_t.mean() + mask_s.mean(),
      'area_non_target': nc_mask_t.mean() + nc_mask_s.mean(),
      'coherency': jnp.abs(mask_t - mask_s).mean(),
  }
  weights = {'classification_teacher': lambda_c, 'classification_student': lambda_c,
             'similarity': lambda_similarity, 'tv': lambda_tv, 'area_class': lambda_ac,
             'area_target': lambda_t, 'area_non_target': lambda_nt,
             'coherency': lambda_coherency}
  return _weighted_total(aux, weights)


def _weighted_total(aux: dict[str, Array], weights: dict[str, float]
                    ) -> tuple[Array, dict[str, Array]]:
  """sum(weight * term); all terms are finite, so a 0 weight removes a term and its gradient."""
  total = sum(weights[name] * term for name, term in aux.items())
  return total, {**aux, 'loss': total}
