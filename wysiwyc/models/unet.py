"""U-Net explainer: (B,H,W,3) images -> (B,H,W,C) per-class mask logits at input resolution."""

from typing import Optional

import chex
import flax.linen as nn
import jax.numpy as jnp

from wysiwyc.models import layers


class UNet(nn.Module):
  """A U-Net with `depth` 2x downsamplings; width doubles at each level.

  Inputs whose sides are not multiples of 2**depth are padded by reflection and the logits
  cropped back, so any size works.
  """
  num_classes: int
  width: int = 32
  depth: int = 3
  norm: str = 'group'
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    chex.assert_rank(images, 4)
    b, h, w, _ = images.shape
    multiple = 2 ** self.depth
    pad_h, pad_w = -h % multiple, -w % multiple
    x = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect' if
                min(h, w) > max(pad_h, pad_w) else 'edge')
    skips = []
    for level in range(self.depth):
      x = layers.ConvBlock(self.width * 2 ** level, self.norm, self.dtype)(x, train)
      skips.append(x)
      x = layers.max_pool_2x2(x)
    x = layers.ConvBlock(self.width * 2 ** self.depth, self.norm, self.dtype)(x, train)
    for level in reversed(range(self.depth)):
      features = self.width * 2 ** level
      x = layers.Upsample2x(features, self.dtype)(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = layers.ConvBlock(features, self.norm, self.dtype)(x, train)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)(x)[:, :h, :w]
    logits = logits.astype(jnp.float32)
    chex.assert_shape(logits, (b, h, w, self.num_classes))
    return logits
