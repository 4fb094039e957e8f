"""LIME (Ribeiro et al. 2016) on SLIC superpixels with a weighted ridge fit, all classes at once.

Per image: SLIC superpixels (scikit-image, on the host in NumPy); `num_samples` binary vectors
z over the superpixels (z_0 = all ones, the others Bernoulli(1/2)); the perturbed image keeps
the superpixels with z = 1 and fills the others with `fill_value` (0: the mean colour of
normalized images); sample weights sqrt(exp(-d^2 / kernel_width^2)) with d the cosine
distance between z and all ones (LIME's image defaults: cosine, width 0.25); then one
weighted ridge regression with intercept (alpha = `ridge_alpha`, as sklearn's `Ridge`) of
every class's score on z. Each pixel gets the coefficient of its superpixel. Unlike the LIME
package, every superpixel is kept (no feature selection). Sample i's z is drawn from
`fold_in(key, i)` and shared by the images of a batch.
"""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from skimage import segmentation as sk_segmentation

from wysiwyc.attribution import common


def slic_segments(images: np.ndarray, num_segments: int = 50,
                  compactness: float = 10.0) -> np.ndarray:
  """SLIC superpixel labels (B,H,W) int32, 0..K-1 per image, of normalized images (B,H,W,3)."""
  pixels = common.denormalize_to_unit(np.asarray(images))
  return np.stack([
      sk_segmentation.slic(image, n_segments=num_segments, compactness=compactness,
                           start_label=0, channel_axis=-1).astype(np.int32)
      for image in pixels])


def weighted_ridge(features: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray,
                   alpha: float = 1.0):
  """argmin_{beta,b} sum_i w_i |y_i - z_i beta - b|^2 + alpha |beta|^2 (b not penalized).

  features (S,K), targets (S,C), weights (S,) >= 0 -> (coefficients (K,C), intercept (C,)).
  Closed form on weighted-centered data, as sklearn's `Ridge(alpha).fit(z, y, sample_weight=w)`.
  """
  total = jnp.maximum(weights.sum(), 1e-12)
  feature_mean = weights @ features / total
  target_mean = weights @ targets / total
  centered = features - feature_mean
  weighted = centered * weights[:, None]
  gram = weighted.T @ centered + alpha * jnp.eye(features.shape[1], dtype=features.dtype)
  coefficients = jnp.linalg.solve(gram, weighted.T @ (targets - target_mean))
  return coefficients, target_mean - feature_mean @ coefficients


def _padded_num_segments(segments: np.ndarray) -> int:
  """Superpixel slots: the batch's largest count rounded up to a multiple of 16 (few shapes)."""
  return int(math.ceil((int(segments.max()) + 1) / 16) * 16)


@functools.partial(jax.jit, static_argnames=(
    'classifier', 'num_slots', 'num_samples', 'kernel_width', 'ridge_alpha', 'fill_value',
    'chunk_size', 'output', 'normalize'))
def _lime_from_segments(classifier, variables, images, segments, key, *, num_slots: int,
                        num_samples: int, kernel_width: float, ridge_alpha: float,
                        fill_value: float, chunk_size: int, output: str, normalize: bool):
  b = images.shape[0]
  one_hot = jax.nn.one_hot(segments, num_slots, dtype=jnp.float32)  # (B,H,W,K)
  present = one_hot.max(axis=(1, 2))  # (B,K): slots that are real superpixels

  def draw(i):
    z = jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, (num_slots,))
    return jnp.where(i == 0, True, z).astype(jnp.float32)  # sample 0 keeps everything

  def scores_of(indices):
    z = jax.vmap(draw)(indices)  # (k,K)
    keep = jnp.einsum('bhwK,kK->bkhw', one_hot, z)[..., None]
    perturbed = keep * images[:, None] + (1.0 - keep) * fill_value
    scores = classifier.scores(variables, perturbed.reshape((-1,) + images.shape[1:]), output)
    return scores.reshape(b, indices.shape[0], -1)  # (B,k,C)

  num_chunks = math.ceil(num_samples / chunk_size)
  indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
  scores = jax.lax.map(scores_of, indices)  # (chunks,B,k,C)
  scores = jnp.moveaxis(scores, 1, 0).reshape(b, num_chunks * chunk_size, -1)[:, :num_samples]
  z = jax.vmap(draw)(jnp.arange(num_samples))  # (S,K)

  def fit(scores_b, present_b):
    design = z * present_b  # absent slots: constant 0 columns, coefficient 0
    kept = design.sum(-1)
    cosine = kept / jnp.maximum(jnp.sqrt(kept * present_b.sum()), 1e-12)
    distance = 1.0 - cosine
    weights = jnp.sqrt(jnp.exp(-(distance ** 2) / kernel_width ** 2))
    coefficients, _ = weighted_ridge(design, scores_b, weights, ridge_alpha)
    return coefficients  # (K,C)

  coefficients = jax.vmap(fit)(scores, present)
  maps = jnp.einsum('bhwK,bKc->bhwc', one_hot, coefficients)
  return common.maybe_normalize(maps, normalize)


def lime(classifier: common.Classifier, variables, images, *, key=None, num_samples: int = 1000,
         num_segments: int = 50, compactness: float = 10.0, kernel_width: float = 0.25,
         ridge_alpha: float = 1.0, fill_value: float = 0.0, chunk_size: int = 32,
         output: str = 'probabilities', normalize: bool = True,
         segments: Optional[np.ndarray] = None) -> jnp.ndarray:
  """LIME maps of every class: (B,H,W,C); [0,1] per (image, class) if `normalize`.

  `segments` (B,H,W) int superpixel labels replace SLIC when given. `chunk_size` samples are
  scored at a time (B * chunk_size images per forward pass).
  """
  common.check_images(images)
  if segments is None:
    segments = slic_segments(np.asarray(images), num_segments, compactness)
  segments = np.asarray(segments, np.int32)
  if segments.shape != images.shape[:3] or segments.min() < 0:
    raise ValueError(f'segments must be non-negative labels of shape {images.shape[:3]}; got '
                     f'{segments.shape}.')
  return _lime_from_segments(
      classifier, variables, images, jnp.asarray(segments), common.default_key(key),
      num_slots=_padded_num_segments(segments), num_samples=num_samples,
      kernel_width=kernel_width, ridge_alpha=ridge_alpha, fill_value=fill_value,
      chunk_size=min(chunk_size, num_samples), output=output, normalize=normalize)


def superpixel_union_iou(segments: np.ndarray, foreground: np.ndarray) -> float:
  """iou with `foreground` (H,W bool) of the union of the segments (H,W int) more than half in
  it."""
  labels = segments.ravel()
  inside = np.bincount(labels, weights=foreground.ravel(), minlength=labels.max() + 1)
  kept = (inside / np.bincount(labels, minlength=labels.max() + 1) > 0.5)[segments]
  return float((kept & foreground).sum() / max((kept | foreground).sum(), 1))
