"""Classifier registry: the frozen explanandum is looked up by name.

A classifier is a Flax module with `__call__(images, train=False) -> logits (B,C)`. Modules that
also expose `features(images, train)` and `logits_from_features(features)` let feature-based
baselines (Grad-CAM) split them at the last convolutional layer.

Register your own model with `@register('my_model')` on a factory `(num_classes, **kwargs) ->
nn.Module`, or name it in a config as `'my_package.my_module:make_model'` without registering.
"""

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
    if self.pooling == 'avg':
      pooled = features.mean(axis=(1, 2))
    elif self.pooling == 'max':
      pooled = features.max(axis=(1, 2))
    elif self.pooling == 'avgmax':
      pooled = jnp.concatenate([features.mean(axis=(1, 2)), features.max(axis=(1, 2))], -1)
    else:
      raise ValueError(f"pooling must be 'avg', 'max' or 'avgmax', got {self.pooling!r}.")
    pooled = self.head_dropout(pooled, deterministic=not train)
    return self.head(pooled).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    return self.logits_from_features(self.features(images, train), train)


@register('simple_cnn')
def simple_cnn(num_classes: int, **kwargs) -> nn.Module:
  return SimpleCNN(num_classes=num_classes, **kwargs)
