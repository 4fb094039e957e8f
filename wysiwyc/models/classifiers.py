"""Classifier registry: the frozen explanandum is looked up by name.

A classifier is a Flax module with `__call__(images, train=False) -> logits (B,C)`. Modules that
also expose `features(images, train)` and `logits_from_features(features)` let feature-based
baselines (Grad-CAM) split them at the last convolutional layer.

Register your own model with `@register('my_model')` on a factory `(num_classes, **kwargs) ->
nn.Module`, or name it in a config as `'my_package.my_module:make_model'` without registering.

Registered families, each small enough to train on the synthetic shapes on a CPU: 'simple_cnn'
(VGG-like), 'resnet' (residual, batch norm, global pooling) and 'mixer' (MLP-Mixer or S2-MLP:
patches, no convolution, no feature hierarchy); the test bench of a black-box Explainer.
"""

import functools
import importlib
from typing import Callable, Dict, Optional

import chex
import flax.linen as nn
import jax.numpy as jnp

from wysiwyc.models import layers

ClassifierFactory = Callable[..., nn.Module]
_REGISTRY: Dict[str, ClassifierFactory] = {}


def register(name: str) -> Callable[[ClassifierFactory], ClassifierFactory]:
  """Decorator that registers a classifier factory under `name`."""
  def decorator(factory: ClassifierFactory) -> ClassifierFactory:
    _REGISTRY[name] = factory
    return factory
  return decorator


def available() -> tuple:
  return tuple(sorted(_REGISTRY))


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds the registered classifier `name` (or `module.path:factory`) for `num_classes`."""
  if ':' in name:
    module_name, attr = name.split(':', 1)
    factory = getattr(importlib.import_module(module_name), attr)
  elif name in _REGISTRY:
    factory = _REGISTRY[name]
  else:
    raise ValueError(f'Unknown classifier {name!r}. Registered: {", ".join(available())}; '
                     "or give 'package.module:factory'.")
  return factory(num_classes=num_classes, **kwargs)


def global_pool(features: jnp.ndarray, pooling: str) -> jnp.ndarray:
  """(B,h,w,F) -> (B,F) by 'avg' or 'max', or (B,2F) by 'avgmax' (the two concatenated)."""
  if pooling == 'avg':
    return features.mean(axis=(1, 2))
  if pooling == 'max':
    return features.max(axis=(1, 2))
  if pooling == 'avgmax':
    return jnp.concatenate([features.mean(axis=(1, 2)), features.max(axis=(1, 2))], -1)
  raise ValueError(f"pooling must be 'avg', 'max' or 'avgmax', got {pooling!r}.")


class SimpleCNN(nn.Module):
  """A small VGG-like CNN for the synthetic data: `depth` conv blocks with 2x2 pooling, global
  pooling (`pooling`) and a linear head. `stem_stride=2` folds each 2x2 patch of pixels into
  channels first (space-to-depth), which makes the network about 4x cheaper."""
  num_classes: int
  width: int = 32
  depth: int = 3
  norm: str = 'batch'
  dropout: float = 0.0
  stem_stride: int = 1
  pooling: str = 'avg'  # global pooling: 'avg', 'max', or 'avgmax' (the two concatenated)
  dtype: Optional[jnp.dtype] = None

  def setup(self):
    self.blocks = [layers.ConvBlock(self.width * 2 ** min(i, 3), self.norm, self.dtype)
                   for i in range(self.depth)]
    self.head_dropout = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images, train: bool = False):
    """Last convolutional feature map (B,h,w,F)."""
    chex.assert_rank(images, 4)
    if self.stem_stride not in (1, 2):
      raise ValueError(f'stem_stride must be 1 or 2, got {self.stem_stride}.')
    # Sides that the stem and the poolings cannot halve are padded by reflection.
    x = layers.pad_to_multiple(images, self.stem_stride * 2 ** max(self.depth - 1, 0))
    if self.stem_stride == 2:
      x = layers.space_to_depth_2x(x)
    for i, block in enumerate(self.blocks):
      if i:
        x = layers.max_pool_2x2(x)
      x = block(x, train)
    return x

  def logits_from_features(self, features, train: bool = False):
    pooled = self.head_dropout(global_pool(features, self.pooling), deterministic=not train)
    return self.head(pooled).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    return self.logits_from_features(self.features(images, train), train)


@register('simple_cnn')
def simple_cnn(num_classes: int, **kwargs) -> nn.Module:
  return SimpleCNN(num_classes=num_classes, **kwargs)


class ResidualBlock(nn.Module):
  """A basic residual block (He et al. 2016): two 3x3 convolutions with batch norm, and a 1x1
  projection shortcut when the width changes. (Starting the second norm's scale at zero, the
  block as the identity, learned slower here: validation per-class accuracy 0.775 against
  0.791 after 2 epochs on the synthetic shapes.)"""
  features: int
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
    y = norm()(y)
    if x.shape[-1] != self.features:
      x = norm()(nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small residual network: a space-to-depth stem (2x2 pixels into channels) and a 3x3
  convolution, `depth` stages of `blocks` residual blocks of widths `width`, 2*width, 4*width..,
  global pooling (`pooling`) and a linear head.

  Each stage after the first halves the resolution by 2x2 pooling first (`downsample`; average
  pooling as ResNet-D's shortcuts do), not by strided convolutions: on CPU, XLA's gradients of
  those take ~3x as long as a pooling plus a stride-1 convolution (DESIGN.md section 3).
  """
  num_classes: int
  width: int = 16
  depth: int = 3
  blocks: int = 2
  downsample: str = 'avg'  # between the stages: 2x2 'avg' or 'max' pooling
  pooling: str = 'max'  # global pooling: 'avg', 'max', or 'avgmax' (the two concatenated)
  dtype: Optional[jnp.dtype] = None

  def setup(self):
    self.stem = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)
    self.stem_norm = nn.BatchNorm(momentum=0.9, dtype=self.dtype)
    self.stages = [[ResidualBlock(self.width * 2 ** i, self.dtype) for _ in range(self.blocks)]
                   for i in range(self.depth)]
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images, train: bool = False):
    """Last stage's feature map (B,h,w,F): 1/2^depth of the input side."""
    chex.assert_rank(images, 4)
    # Sides that the stem and the poolings cannot halve are padded by reflection.
    x = layers.space_to_depth_2x(layers.pad_to_multiple(images, 2 ** self.depth))
    x = nn.relu(self.stem_norm(self.stem(x), use_running_average=not train))
    for i, stage in enumerate(self.stages):
      if i:
        x = self._downsample(x)
      for block in stage:
        x = block(x, train)
    return x

  def _downsample(self, x):
    if self.downsample == 'max':
      return layers.max_pool_2x2(x)
    if self.downsample == 'avg':
      b, h, w, c = x.shape
      return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    raise ValueError(f"downsample must be 'avg' or 'max', got {self.downsample!r}.")

  def logits_from_features(self, features, train: bool = False):
    del train  # no dropout
    return self.head(global_pool(features, self.pooling)).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    logits = self.logits_from_features(self.features(images, train), train)
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits


@register('resnet')
def resnet(num_classes: int, **kwargs) -> nn.Module:
  return ResNet(num_classes=num_classes, **kwargs)


class MixerBlock(nn.Module):
  """One MLP-Mixer block (Tolstikhin et al. 2021): a token-mixing sublayer across the patches,
  then a channel-mixing MLP within each patch, each after normalization (`norm`: 'layer', or
  'batch' over the batch and the patches) with a residual connection.

  `token_mixing`: 'mlp' (the Mixer's: one MLP across all the patches, position-specific weights)
  or 'shift' (S2-MLP, Yu et al. 2021: a Dense layer, a quarter of the channels moved one patch
  in each of the four directions, a Dense layer; the same weights at every patch, so an object is
  seen alike wherever it lies)."""
  token_mlp_dim: int
  channel_mlp_dim: int
  norm: str = 'layer'
  token_mixing: str = 'mlp'
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x, grid, train: bool = False):  # x (B,N,C), grid (H,W) with H*W = N
    norm = functools.partial(token_norm, self.norm, train, self.dtype)
    if self.token_mixing == 'mlp':
      y = norm()(x).swapaxes(1, 2)  # (B,C,N)
      y = nn.Dense(self.token_mlp_dim, dtype=self.dtype)(y)
      y = nn.Dense(x.shape[1], dtype=self.dtype)(nn.gelu(y)).swapaxes(1, 2)
    elif self.token_mixing == 'shift':
      y = nn.gelu(nn.Dense(x.shape[2], dtype=self.dtype)(norm()(x)))
      y = spatial_shift(y.reshape(x.shape[0], *grid, x.shape[2])).reshape(x.shape)
      y = nn.Dense(x.shape[2], dtype=self.dtype)(y)
    else:
      raise ValueError(f"token_mixing must be 'mlp' or 'shift', got {self.token_mixing!r}.")
    x = x + y
    y = nn.Dense(self.channel_mlp_dim, dtype=self.dtype)(norm()(x))
    return x + nn.Dense(x.shape[2], dtype=self.dtype)(nn.gelu(y))


def spatial_shift(x):
  """(B,H,W,C): the four quarters of the channels moved one cell down, up, right and left (the
  edge cell repeated), the rest in place."""
  q = x.shape[-1] // 4
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  h, w = x.shape[1:3]
  # The window at (dy, dx) of the padded grid shows each cell's neighbour at (dy - 1, dx - 1).
  window = lambda dy, dx, channels: padded[:, dy:dy + h, dx:dx + w, channels]
  return jnp.concatenate([window(0, 1, slice(0, q)), window(2, 1, slice(q, 2 * q)),
                          window(1, 0, slice(2 * q, 3 * q)), window(1, 2, slice(3 * q, 4 * q)),
                          x[..., 4 * q:]], axis=-1)


def token_norm(kind: str, train: Optional[bool], dtype=None) -> nn.Module:
  """A normalization of tokens (B,N,C): 'layer' (over C), or 'batch' (per channel, over B,N;
  `train` None: given at call time)."""
  if kind == 'layer':
    return nn.LayerNorm(dtype=dtype)
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=None if train is None else not train, momentum=0.9,
                        dtype=dtype)
  raise ValueError(f"norm must be 'layer' or 'batch', got {kind!r}.")


class Mixer(nn.Module):
  """A small MLP-Mixer: the image cut into `patch` x `patch` patches, one token each, embedded by
  a Dense layer to `width` channels from its patch and `overlap` patches on every side; `depth`
  Mixer blocks (token mixing `token_mixing`: an MLP `token_mlp_ratio` * width wide across the
  patches, or spatial shifts; channel MLP `mlp_ratio` * width; each after `norm`), `norm`, global
  pooling over the tokens (`pooling`), a linear head. No convolution and no feature hierarchy:
  every block works at the patch grid.

  With `token_mixing='mlp'` the token-mixing weights depend on the number of patches, so a model
  serves one image size; 'shift' serves any. Sides that the patch does not divide are padded by
  reflection.
  """
  num_classes: int
  width: int = 64
  depth: int = 4
  patch: int = 8
  token_mlp_ratio: float = 1.0
  mlp_ratio: float = 4.0
  pooling: str = 'max'  # over the patches: 'avg', 'max', or 'avgmax' (the two concatenated)
  # Each token embeds its patch and `overlap` patches on every side (zeros past the border): a
  # (2 * overlap + 1) * patch square, so that a window holds a whole object more often.
  overlap: int = 1
  norm: str = 'layer'  # 'layer', or 'batch' (per channel over the batch and the patches)
  token_mixing: str = 'mlp'  # 'mlp' or 'shift' (MixerBlock)
  dtype: Optional[jnp.dtype] = None

  def setup(self):
    self.embed = nn.Dense(self.width, dtype=self.dtype)
    self.blocks = [MixerBlock(max(int(self.width * self.token_mlp_ratio), 1),
                              max(int(self.width * self.mlp_ratio), 1), self.norm,
                              self.token_mixing, self.dtype)
                   for _ in range(self.depth)]
    self.final_norm = token_norm(self.norm, None, self.dtype)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images, train: bool = False):
    """The patches' final embeddings on their grid (B,H/patch,W/patch,width), what Grad-CAM
    splits at."""
    chex.assert_rank(images, 4)
    x = layers.pad_to_multiple(images, self.patch)
    b, h, w, c = x.shape
    p = self.patch
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, h // p, w // p, p * p * c)
    if self.overlap:
      o = self.overlap
      padded = jnp.pad(x, ((0, 0), (o, o), (o, o), (0, 0)))
      x = jnp.concatenate([padded[:, dy:dy + h // p, dx:dx + w // p]
                           for dy in range(2 * o + 1) for dx in range(2 * o + 1)], axis=-1)
    x = self.embed(x.reshape(b, (h // p) * (w // p), x.shape[-1]))
    for block in self.blocks:
      x = block(x, (h // p, w // p), train)
    x = (self.final_norm(x, use_running_average=not train) if self.norm == 'batch'
         else self.final_norm(x))
    return x.reshape(b, h // p, w // p, self.width)

  def logits_from_features(self, features, train: bool = False):
    del train
    return self.head(global_pool(features, self.pooling)).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    logits = self.logits_from_features(self.features(images, train), train)
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits


@register('mixer')
def mixer(num_classes: int, **kwargs) -> nn.Module:
  return Mixer(num_classes=num_classes, **kwargs)
