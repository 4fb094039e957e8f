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
  average pooling and a linear head."""
  num_classes: int
  width: int = 32
  depth: int = 3
  norm: str = 'batch'
  dropout: float = 0.0
  dtype: Optional[jnp.dtype] = None

  def setup(self):
    self.blocks = [layers.ConvBlock(self.width * 2 ** min(i, 3), self.norm, self.dtype)
                   for i in range(self.depth)]
    self.head_dropout = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images, train: bool = False):
    """Last convolutional feature map (B,h,w,F)."""
    chex.assert_rank(images, 4)
    x = images
    for i, block in enumerate(self.blocks):
      if i:
        x = layers.max_pool_2x2(x)
      x = block(x, train)
    return x

  def logits_from_features(self, features, train: bool = False):
    pooled = features.mean(axis=(1, 2))
    pooled = self.head_dropout(pooled, deterministic=not train)
    return self.head(pooled).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    return self.logits_from_features(self.features(images, train), train)


@register('simple_cnn')
def simple_cnn(num_classes: int, **kwargs) -> nn.Module:
  return SimpleCNN(num_classes=num_classes, **kwargs)
