"""What every attribution method shares: the classifier view, normalization, chunked sums, blur.

Conventions of `wysiwyc.attribution`:
- Images are float (B,H,W,3), normalized as the classifier expects (the project's pipelines:
  ImageNet mean/std, `(x/255 - mean)/std`); integer (uint8) images are refused in one line
  (`check_images`). Attributions are (B,H,W,C), one map per class, class axis last.
- With `normalize=True` (the default) each (image, class) map is min-max rescaled to [0,1], as
  the authors rescale every baseline before scoring it (`rescale_mask` in NN-Explainer); a
  constant map becomes all zeros.
- Work over many perturbed copies is done in chunks with `lax.scan`, so memory is bounded by
  `chunk_size` (times the batch) and not by the number of masks, samples or steps.
- Random draws are keyed per item (mask, sample) with `fold_in(key, index)`: the result does not
  depend on `chunk_size`, and the same key gives the same result.
"""

import dataclasses
import math
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc import errors

# The normalization of the project's input pipelines (wysiwyc.data.pipeline); LIME needs it to
# run SLIC on the pixels. Copied, not imported, so that this package does not load TensorFlow.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OUTPUTS = ('logits', 'probabilities')


@dataclasses.dataclass(frozen=True)
class Classifier:
  """The explanandum as the attribution methods see it; hashable, so a static jit argument.

  `module` is a Flax module with `__call__(images, train=False) -> logits (B,C)`. Grad-CAM also
  needs `features(images, train=False) -> (B,h,w,F)` (the chosen layer's activations) and
  `logits_from_features(features, train=False) -> (B,C)` (the rest of the network).
  Probabilities are `sigmoid(logits)` when `multilabel`, else `softmax(logits)`.
  """
  module: nn.Module
  multilabel: bool = True

  def logits(self, variables, images) -> jnp.ndarray:
    return self.module.apply(variables, images, train=False).astype(jnp.float32)

  def probabilities(self, variables, images) -> jnp.ndarray:
    logits = self.logits(variables, images)
    return jax.nn.sigmoid(logits) if self.multilabel else jax.nn.softmax(logits)

  def scores(self, variables, images, output: str) -> jnp.ndarray:
    """`output` is 'logits' or 'probabilities'."""
    if output == 'logits':
      return self.logits(variables, images)
    if output == 'probabilities':
      return self.probabilities(variables, images)
    raise ValueError(f'Unknown output {output!r}; choose one of {OUTPUTS}.')

  def features(self, variables, images) -> jnp.ndarray:
    if not hasattr(self.module, 'features'):
      raise ValueError(f'{type(self.module).__name__} has no `features` method; Grad-CAM needs '
                       '`features` and `logits_from_features` to split the network.')
    return self.module.apply(variables, images, train=False, method='features')

  def head(self, variables, features) -> jnp.ndarray:
    return self.module.apply(variables, features, train=False,
                             method='logits_from_features').astype(jnp.float32)


def check_images(images: chex.Array) -> None:
  """Refuses, in one line, what no method takes: images that are not (B,H,W,3), or not floats
  (uint8 pixels handed over without the normalization the classifier expects)."""
  if getattr(images, 'ndim', None) != 4 or images.shape[-1] != 3:
    raise errors.UserError(f'Expected images (B,H,W,3); got shape '
                           f'{getattr(images, "shape", type(images).__name__)}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise errors.UserError(
        f'Expected float images normalized as the classifier expects (the pipelines: ImageNet '
        f'mean/std, (x/255 - mean)/std); got {images.dtype}. Normalize uint8 pixels first: '
        'wysiwyc.explain.normalize(images).')


def default_key(key):
  return jax.random.key(0) if key is None else key


def normalize_maps(maps: chex.Array) -> jnp.ndarray:
  """Min-max rescales each (image, class) map of (B,H,W,C) to [0,1]; constant maps become 0."""
  chex.assert_rank(maps, 4)
  maps = maps.astype(jnp.float32)
  low = maps.min(axis=(1, 2), keepdims=True)
  spread = maps.max(axis=(1, 2), keepdims=True) - low
  positive = spread > 0
  scaled = jnp.where(positive, (maps - low) / jnp.where(positive, spread, 1.0), 0.0)
  return jnp.clip(scaled, 0.0, 1.0)  # rounding can step just outside


def maybe_normalize(maps: jnp.ndarray, normalize: bool) -> jnp.ndarray:
  return normalize_maps(maps) if normalize else maps.astype(jnp.float32)


def per_class_vjp(fn: Callable, primal: jnp.ndarray):
  """Gradients of each output class of `fn` (batch-separable: (B,...) -> (B,C)) w.r.t. `primal`.

  One reverse pass, vmapped over the C one-hot cotangents; returns (outputs (B,C), gradients
  (C, *primal.shape)). Images of a batch must not interact in `fn` (eval-mode networks).
  """
  outputs, vjp = jax.vjp(fn, primal)
  num_classes = outputs.shape[-1]
  cotangents = jnp.broadcast_to(jnp.eye(num_classes, dtype=outputs.dtype)[:, None, :],
                                (num_classes,) + outputs.shape)
  (grads,) = jax.vmap(vjp)(cotangents)
  return outputs, grads


def sum_over_chunks(fn: Callable[[jnp.ndarray, jnp.ndarray], Any], num_items: int,
                    chunk_size: int) -> Any:
  """Sum over items 0..num_items-1 of `fn`, evaluated `chunk_size` items at a time.

  `fn(indices (chunk,), valid (chunk,) bool)` returns a pytree summed over its chunk; it must
  ignore the invalid (padding) items of the last chunk. A `lax.scan` keeps one chunk alive.
  """
  if num_items < 1 or chunk_size < 1:
    raise ValueError(f'Need num_items >= 1 and chunk_size >= 1; got {num_items}, {chunk_size}.')
  chunk_size = min(chunk_size, num_items)
  num_chunks = math.ceil(num_items / chunk_size)

  def indices(k):
    index = k * chunk_size + jnp.arange(chunk_size)
    return index, index < num_items

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(fn, *indices(jnp.zeros((), jnp.int32))))

  def body(total, k):
    return jax.tree.map(jnp.add, total, fn(*indices(k))), None

  total, _ = jax.lax.scan(body, zeros, jnp.arange(num_chunks))
  return total


def gaussian_kernel(sigma: float) -> np.ndarray:
  radius = max(1, int(math.ceil(3.0 * sigma)))
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(x: chex.Array, sigma: float) -> jnp.ndarray:
  """Separable Gaussian blur of (B,H,W,K) over H and W (edge padding); sigma in pixels, static."""
  chex.assert_rank(x, 4)
  if sigma <= 0:
    return x
  kernel = jnp.asarray(gaussian_kernel(sigma))
  radius = (kernel.shape[0] - 1) // 2
  channels = x.shape[-1]

  def blur_along(y, axis):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    y = jnp.pad(y, pad, mode='edge')
    shape = (kernel.shape[0], 1, 1, channels) if axis == 1 else (1, kernel.shape[0], 1, channels)
    return jax.lax.conv_general_dilated(
        y, jnp.broadcast_to(kernel.reshape(shape[:2] + (1, 1)), shape).astype(y.dtype),
        window_strides=(1, 1), padding='VALID', feature_group_count=channels,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  return blur_along(blur_along(x, 1), 2)


def denormalize_to_unit(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """ImageNet-normalized images -> float RGB in [0,1] (for SLIC)."""
  return np.clip(np.asarray(images, np.float32) * np.asarray(std, np.float32)
                 + np.asarray(mean, np.float32), 0.0, 1.0)
