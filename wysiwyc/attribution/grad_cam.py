"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018).

The classifier is split at the layer its `features` method returns (`Classifier.features` /
`Classifier.head`; for `SimpleCNN` the last convolutional block). The gradients of every class's
logit w.r.t. those activations come from one reverse pass of the head vmapped over the classes.
Maps are ReLU'd, bilinearly upsampled to the input size and min-max rescaled per (image, class)
unless `normalize=False` (then they stay at the feature resolution's values, upsampled).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from wysiwyc.attribution import common

_EPS = 1e-7


def channel_weights(grads: jnp.ndarray, activations: jnp.ndarray, plus_plus: bool) -> jnp.ndarray:
  """Per-channel weights (C,B,F) from gradients (C,B,h,w,F) and activations (B,h,w,F).

  Grad-CAM: the spatial mean of the gradients. Grad-CAM++: sum over space of
  relu(g) * alpha with alpha = g^2 / (2 g^2 + sum_hw(A) g^3) (the closed form for an
  exponential of the score; alpha is 0 where g is 0).
  """
  if not plus_plus:
    return grads.mean(axis=(2, 3))
  g2, g3 = grads ** 2, grads ** 3
  activation_sums = activations.sum(axis=(1, 2))[None, :, None, None, :]
  denominator = 2.0 * g2 + activation_sums * g3
  safe = jnp.abs(denominator) > _EPS
  alpha = jnp.where((grads != 0) & safe, g2 / jnp.where(safe, denominator, 1.0), 0.0)
  return (jax.nn.relu(grads) * alpha).sum(axis=(2, 3))


@functools.partial(jax.jit, static_argnames=('classifier', 'plus_plus', 'normalize'))
def _cam(classifier, variables, images, plus_plus: bool, normalize: bool):
  common.check_images(images)
  activations = classifier.features(variables, images)  # (B,h,w,F)
  _, grads = common.per_class_vjp(lambda a: classifier.head(variables, a), activations)
  weights = channel_weights(grads, activations, plus_plus)  # (C,B,F)
  cams = jax.nn.relu(jnp.einsum('cbf,bhwf->bhwc', weights, activations))
  b, height, width = images.shape[:3]
  cams = jax.image.resize(cams, (b, height, width, cams.shape[-1]), 'bilinear')
  return common.maybe_normalize(cams, normalize)


def grad_cam(classifier: common.Classifier, variables, images, *, key=None,
             normalize: bool = True, chunk_size: Optional[int] = None) -> jnp.ndarray:
  """Grad-CAM maps of every class: (B,H,W,C)."""
  del key, chunk_size  # deterministic; one forward and one (vmapped) backward pass
  return _cam(classifier, variables, images, False, normalize)


def grad_cam_plus_plus(classifier: common.Classifier, variables, images, *, key=None,
                       normalize: bool = True, chunk_size: Optional[int] = None) -> jnp.ndarray:
  """Grad-CAM++ maps of every class: (B,H,W,C)."""
  del key, chunk_size
  return _cam(classifier, variables, images, True, normalize)
