"""U-Net explainer: (B,H,W,3) images -> (B,H,W,C) per-class mask logits at input resolution."""

from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wysiwyc.models import layers

UPSAMPLING = ('bilinear', 'guided')


class UNet(nn.Module):
  """A U-Net with `depth` 2x downsamplings; width doubles at each level.

  Inputs whose sides are not multiples of 2**depth are padded by reflection and the logits
  cropped back, so any size works. `input_stride=2` runs the whole U-Net at half resolution
  (space-to-depth input, logits upsampled bilinearly, as DeepLab upsamples its logits): about
  4x cheaper, with masks still at input resolution.

  `logit_scale` multiplies the logits: a reparametrization of the last layer that, under Adam,
  lets the logits grow `logit_scale` times faster. A self-explainer needs it: its class logit
  is the spatial mean of its mask logits, so an object covering 5% of the image must reach a
  mask logit ~20x the class logit.

  `upsample='guided'` brings the logits to input resolution with a guided filter whose guide is
  the input image (windows of radius `guide_radius` input pixels, ridge `guide_eps` in the
  normalized image's units; with `input_stride=2` the fast guided filter,
  `layers.guided_upsample_2x`, replaces the bilinear upsampling): the mask edges snap to the
  image's edges instead of following the half-resolution grid. It adds no variable.
  """
  num_classes: int
  width: int = 32
  depth: int = 3
  norm: str = 'group'
  input_stride: int = 1
  logit_scale: float = 1.0
  upsample: str = 'bilinear'
  guide_radius: int = 2
  guide_eps: float = 0.01
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    chex.assert_rank(images, 4)
    b, h, w, _ = images.shape
    if self.upsample not in UPSAMPLING:
      raise ValueError(f'upsample must be one of {UPSAMPLING}, got {self.upsample!r}.')
    if self.input_stride not in (1, 2):
      raise ValueError(f'input_stride must be 1 or 2, got {self.input_stride}.')
    padded = layers.pad_to_multiple(images, self.input_stride * 2 ** self.depth)
    x = padded
    if self.input_stride == 2:
      x = layers.space_to_depth_2x(x)
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
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)
    logits = self.logit_scale * logits
    if self.upsample == 'guided':
      radius = max(1, self.guide_radius // self.input_stride)
      logits = (layers.guided_upsample_2x(padded, logits, radius, self.guide_eps)
                if self.input_stride == 2 else
                layers.guided_filter(padded, logits, radius, self.guide_eps))
    elif self.input_stride == 2:
      logits = jax.image.resize(logits, padded.shape[:3] + (self.num_classes,), 'bilinear')
    logits = logits[:, :h, :w]
    chex.assert_shape(logits, (b, h, w, self.num_classes))
    return logits
