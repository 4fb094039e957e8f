"""Layers shared by the explainers and classifiers.

Two ops are written by hand because XLA's CPU kernels for the stock versions are slow in the
backward pass (DESIGN.md section 3): 2x2 max pooling as a reshape plus `max`, and 2x upsampling
as a `Dense` to 4*C channels followed by a depth-to-space reshape.
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

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
