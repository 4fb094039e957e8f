"""The gradient family: vanilla gradients, integrated gradients, SmoothGrad, guided backprop.

Each has a raw form, `*_raw(...) -> (B,H,W,3,C)` attributions of each input value to each
class's score (logits by default), and a map form `(B,H,W,C)` registered in
`wysiwyc.attribution.METHODS`: the maximum over colour channels of the absolute attribution
(Simonyan et al.'s saliency map), min-max rescaled per (image, class) unless `normalize=False`.
All classes come from one reverse pass vmapped over the classes' one-hot cotangents.
"""

import contextlib
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from wysiwyc.attribution import common


def _class_gradients(classifier, variables, images, output):
  """(B,H,W,3,C) gradients of every class's score w.r.t. the images."""
  _, grads = common.per_class_vjp(lambda x: classifier.scores(variables, x, output), images)
  return jnp.moveaxis(grads, 0, -1)


@functools.partial(jax.jit, static_argnames=('normalize',))
def to_map(raw: jnp.ndarray, normalize: bool = True) -> jnp.ndarray:
  """(B,H,W,3,C) attributions -> (B,H,W,C) max over channels of |attribution|."""
  return common.maybe_normalize(jnp.abs(raw).max(axis=3), normalize)


@functools.partial(jax.jit, static_argnames=('classifier', 'output'))
def gradients_raw(classifier: common.Classifier, variables, images, *,
                  output: str = 'logits') -> jnp.ndarray:
  """d score_c / d x for every class c: (B,H,W,3,C)."""
  common.check_images(images)
  return _class_gradients(classifier, variables, images, output)


@functools.partial(jax.jit, static_argnames=('classifier', 'num_steps', 'chunk_size', 'output'))
def integrated_gradients_raw(classifier: common.Classifier, variables, images, *,
                             baseline: Optional[jnp.ndarray] = None, num_steps: int = 50,
                             chunk_size: int = 16, output: str = 'logits') -> jnp.ndarray:
  """Integrated gradients (Sundararajan et al. 2017): (x - x0) * mean_k grad(x0 + a_k (x - x0)).

  Midpoint rule with a_k = (k + 1/2) / num_steps; `baseline` x0 defaults to zeros (the mean
  colour for normalized images). Attributions of a class sum to about score(x) - score(x0)
  (completeness), exactly for a linear model. `chunk_size` steps are evaluated at once.
  """
  common.check_images(images)
  baseline = jnp.zeros_like(images) if baseline is None else jnp.broadcast_to(baseline,
                                                                               images.shape)
  delta = images - baseline

  def chunk(steps, valid):
    alphas = (steps.astype(jnp.float32) + 0.5) / num_steps
    points = baseline[None] + alphas[:, None, None, None, None] * delta[None]  # (k,B,H,W,3)
    k, b = points.shape[:2]
    grads = _class_gradients(classifier, variables, points.reshape((k * b,) + images.shape[1:]),
                             output).reshape((k, b) + images.shape[1:] + (-1,))
    return jnp.einsum('k,kbhwxc->bhwxc', valid.astype(grads.dtype), grads)

  total = common.sum_over_chunks(chunk, num_steps, chunk_size)
  return delta[..., None] * total / num_steps


@functools.partial(jax.jit, static_argnames=('classifier', 'num_samples', 'noise_level',
                                             'chunk_size', 'output'))
def smoothgrad_raw(classifier: common.Classifier, variables, images, *, key=None,
                   num_samples: int = 50, noise_level: float = 0.15, chunk_size: int = 16,
                   output: str = 'logits') -> jnp.ndarray:
  """SmoothGrad (Smilkov et al. 2017): gradients averaged over `num_samples` noisy copies.

  Noise is Gaussian with std = noise_level * (max - min) of each image (the paper's 10-20%);
  sample i draws with `fold_in(key, i)`.
  """
  common.check_images(images)
  key = common.default_key(key)
  spread = images.max(axis=(1, 2, 3), keepdims=True) - images.min(axis=(1, 2, 3), keepdims=True)
  sigma = noise_level * spread

  def chunk(samples, valid):
    noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), images.shape))(
        samples)
    points = images[None] + sigma[None] * noise  # (k,B,H,W,3)
    k, b = points.shape[:2]
    grads = _class_gradients(classifier, variables, points.reshape((k * b,) + images.shape[1:]),
                             output).reshape((k, b) + images.shape[1:] + (-1,))
    return jnp.einsum('k,kbhwxc->bhwxc', valid.astype(grads.dtype), grads)

  return common.sum_over_chunks(chunk, num_samples, chunk_size) / num_samples


@jax.custom_vjp
def guided_relu(x):
  """ReLU whose gradient passes only where both the input and the incoming gradient are > 0."""
  return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@contextlib.contextmanager
def guided_relus():
  """While active, `jax.nn.relu` and `flax.linen.relu` (the same function) are `guided_relu`.

  Only tracing inside the context sees the change: use it inside a jitted function. ReLUs
  written another way (`jnp.maximum(x, 0)`) are not replaced.
  """
  import flax.linen.activation as flax_activation  # pylint: disable=g-import-not-at-top
  targets = [(jax.nn, 'relu'), (nn, 'relu'), (flax_activation, 'relu')]
  saved = [getattr(module, name) for module, name in targets]
  try:
    for module, name in targets:
      setattr(module, name, guided_relu)
    yield
  finally:
    for (module, name), original in zip(targets, saved):
      setattr(module, name, original)


@functools.partial(jax.jit, static_argnames=('classifier', 'output'))
def guided_backprop_raw(classifier: common.Classifier, variables, images, *,
                        output: str = 'logits') -> jnp.ndarray:
  """Guided backpropagation (Springenberg et al. 2015): gradients through guided ReLUs."""
  common.check_images(images)
  with guided_relus():
    return _class_gradients(classifier, variables, images, output)


def gradients(classifier, variables, images, *, key=None, output: str = 'logits',
              normalize: bool = True, chunk_size: Optional[int] = None) -> jnp.ndarray:
  """Vanilla gradient saliency (Simonyan et al. 2014): (B,H,W,C) in [0,1]."""
  del key, chunk_size  # deterministic, one pass
  return to_map(gradients_raw(classifier, variables, images, output=output), normalize)


def integrated_gradients(classifier, variables, images, *, key=None, num_steps: int = 50,
                         chunk_size: int = 16, output: str = 'logits',
                         normalize: bool = True) -> jnp.ndarray:
  """Integrated gradients from a zero (mean-colour) baseline: (B,H,W,C) in [0,1]."""
  del key
  return to_map(integrated_gradients_raw(classifier, variables, images, num_steps=num_steps,
                                         chunk_size=chunk_size, output=output), normalize)


def smoothgrad(classifier, variables, images, *, key=None, num_samples: int = 50,
               noise_level: float = 0.15, chunk_size: int = 16, output: str = 'logits',
               normalize: bool = True) -> jnp.ndarray:
  """SmoothGrad saliency: (B,H,W,C) in [0,1]."""
  return to_map(smoothgrad_raw(classifier, variables, images, key=key, num_samples=num_samples,
                               noise_level=noise_level, chunk_size=chunk_size, output=output),
                normalize)


def guided_backprop(classifier, variables, images, *, key=None, output: str = 'logits',
                    normalize: bool = True, chunk_size: Optional[int] = None) -> jnp.ndarray:
  """Guided backprop saliency: (B,H,W,C) in [0,1]."""
  del key, chunk_size
  return to_map(guided_backprop_raw(classifier, variables, images, output=output), normalize)
