"""Layers shared by the explainers and classifiers.

Two ops are written by hand because XLA's CPU kernels for the stock versions are slow in the
backward pass (DESIGN.md section 3): 2x2 max pooling as a reshape plus `max`, and 2x upsampling
as a `Dense` to 4*C channels followed by a depth-to-space reshape.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORMS = ('batch', 'group', 'none')


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2, stride-2 max pooling of an NHWC array with even H and W."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def depth_to_space_2x(x: jnp.ndarray) -> jnp.ndarray:
  """(B,H,W,4C) -> (B,2H,2W,C)."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c)


def pad_to_multiple(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
  """Pads H and W of an NHWC array at the end up to multiples of `multiple` (by reflection)."""
  _, h, w, _ = x.shape
  pad_h, pad_w = -h % multiple, -w % multiple
  if not pad_h and not pad_w:
    return x
  mode = 'reflect' if min(h, w) > max(pad_h, pad_w) else 'edge'
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def space_to_depth_2x(x: jnp.ndarray) -> jnp.ndarray:
  """(B,H,W,C) -> (B,H/2,W/2,4C), the inverse of `depth_to_space_2x`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


class Upsample2x(nn.Module):
  """Learned 2x upsampling, equivalent to a 2x2/stride-2 transposed convolution."""
  features: int
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x):
    return depth_to_space_2x(nn.Dense(4 * self.features, dtype=self.dtype)(x))


def make_norm(kind: str, train: bool, dtype=None):
  """Normalization layer factory: 'batch', 'group' (8 groups or fewer) or 'none'."""
  if kind == 'batch':
    return lambda x: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype)(x)
  if kind == 'group':
    return lambda x: nn.GroupNorm(num_groups=min(8, x.shape[-1]), dtype=dtype)(x)
  if kind == 'none':
    return lambda x: x
  raise ValueError(f'Unknown norm {kind!r}; choose one of {NORMS}.')


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each followed by normalization and ReLU."""
  features: int
  norm: str = 'group'
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=self.norm == 'none', dtype=self.dtype)(x)
      x = make_norm(self.norm, train, self.dtype)(x)
      x = nn.relu(x)
    return x


def _window_average_matrix(n: int, radius: int) -> np.ndarray:
  """(n,n): row i averages the entries i-r..i+r that exist."""
  index = np.arange(n)
  band = (np.abs(index[:, None] - index[None, :]) <= radius).astype(np.float32)
  return band / band.sum(axis=1, keepdims=True)


def box_mean(x: jnp.ndarray, radius: int) -> jnp.ndarray:
  """Mean of an (B,H,W,...) array over (2r+1)^2 windows, windows cut at the borders.

  Written as two products with banded averaging matrices: on CPU, XLA's matrix products are
  ~10x faster than its window reductions (and its cumulative sums, which lower to them).
  """
  rows = _window_average_matrix(x.shape[1], radius)
  cols = _window_average_matrix(x.shape[2], radius)
  return jnp.einsum('ij,bjw...->biw...', rows, jnp.einsum('uw,bhw...->bhu...', cols, x))


def _solve_positive_definite(matrix: jnp.ndarray, rhs: jnp.ndarray) -> jnp.ndarray:
  """Solves (...,K,K) symmetric positive-definite systems for (...,K,C) right-hand sides; the
  3x3 case (a colour guide) by the adjugate, much faster on CPU than a batched LU."""
  if matrix.shape[-1] != 3:
    return jnp.linalg.solve(matrix, rhs)
  a, b, c = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
  d, e, f = matrix[..., 1, 1], matrix[..., 1, 2], matrix[..., 2, 2]
  adjugate = jnp.stack([jnp.stack([d * f - e * e, c * e - b * f, b * e - c * d], -1),
                        jnp.stack([c * e - b * f, a * f - c * c, b * c - a * e], -1),
                        jnp.stack([b * e - c * d, b * c - a * e, a * d - b * b], -1)], -2)
  determinant = a * adjugate[..., 0, 0] + b * adjugate[..., 0, 1] + c * adjugate[..., 0, 2]
  return jnp.einsum('...ij,...jc->...ic', adjugate, rhs) / determinant[..., None, None]


def _ridge_fit(guide: jnp.ndarray, source: jnp.ndarray, radius: int, eps: float):
  """Per window, the ridge fit `source ~ guide @ slope + offset`: slope (B,H,W,K,C) and
  offset (B,H,W,C), each averaged over the windows that hold the pixel."""
  k = guide.shape[-1]
  mean_guide = box_mean(guide, radius)
  mean_source = box_mean(source, radius)
  cov = (box_mean(guide[..., :, None] * source[..., None, :], radius)
         - mean_guide[..., :, None] * mean_source[..., None, :])  # (B,H,W,K,C)
  var = (box_mean(guide[..., :, None] * guide[..., None, :], radius)
         - mean_guide[..., :, None] * mean_guide[..., None, :])  # (B,H,W,K,K)
  slope = _solve_positive_definite(var + eps * jnp.eye(k), cov)
  offset = mean_source - jnp.einsum('...kc,...k->...c', slope, mean_guide)
  return box_mean(slope, radius), box_mean(offset, radius)


def guided_filter(guide: jnp.ndarray, source: jnp.ndarray, radius: int,
                  eps: float) -> jnp.ndarray:
  """He et al.'s guided filter with a colour guide: (B,H,W,K) guide, (B,H,W,C) source.

  In every window the source is fit as a linear function of the guide's K channels (ridge
  `eps`), and each pixel takes the window-averaged fit applied to its own guide value: the
  output follows the source's values and the guide's edges.
  """
  guide, source = guide.astype(jnp.float32), source.astype(jnp.float32)
  slope, offset = _ridge_fit(guide, source, radius, eps)
  return jnp.einsum('...kc,...k->...c', slope, guide) + offset


def guided_upsample_2x(guide: jnp.ndarray, source: jnp.ndarray, radius: int,
                       eps: float) -> jnp.ndarray:
  """(B,2H,2W,K) guide, (B,H,W,C) source -> (B,2H,2W,C): the fast guided filter (He & Sun
  2015; Wu et al., "Fast End-to-End Trainable Guided Filter", CVPR 2018). The fit is made at
  the source's resolution against the 2x2-averaged guide, upsampled bilinearly and applied to
  the full-resolution guide, so the output's edges are the guide's. Differentiable."""
  guide, source = guide.astype(jnp.float32), source.astype(jnp.float32)
  b, h, w, k = guide.shape
  small_guide = guide.reshape(b, h // 2, 2, w // 2, 2, k).mean(axis=(2, 4))
  slope, offset = _ridge_fit(small_guide, source, radius, eps)
  c = source.shape[-1]
  slope = jax.image.resize(slope, (b, h, w, k, c), 'bilinear')
  offset = jax.image.resize(offset, (b, h, w, c), 'bilinear')
  return jnp.einsum('...kc,...k->...c', slope, guide) + offset
