"""Extremal Perturbations (Fong, Patrick & Vedaldi 2019), preservation variant, with optax.

For each (image, class) pair and each target area a, a smooth mask m is optimized so that the
image that keeps m and blurs the rest scores high for the class, while the sorted mask values
stay close to a step with a fraction a of ones:

    loss_a(m) = -reward(x * m + blur(x) * (1 - m)) + lambda_t * mean((sort(m) - r_a)^2)

with lambda_t = area_weight * area_weight_growth^t (TorchRay: 300 * 1.0035^t), from m = 1.

- m: parameters on a grid of ceil(H/step) x ceil(W/step) cells in [0,1], starting at 1 (minus
  `init_noise` * U(0,1), from `key`, to break the sort's ties at random) and clipped after each step of TorchRay's optimizer (SGD, lr 0.01, momentum and dampening 0.9,
  as `optax.sgd`), smoothed by a Gaussian of `smoothing` cells and bilinearly upsampled. (TorchRay
  smooths with a smooth-max convolution; a plain Gaussian is used here.) Defaults scale the
  authors' 224-pixel settings (step 7, sigma 21 px, blur sigma 20 px) to the image size.
- reward: 'contrastive' (the authors' choice) is logit_c - max over other classes of the logit;
  'logit' is logit_c.
- Final mask per pair, as the authors: the smallest area whose perturbed image scores at least
  as high for the class as the original image, else the largest area.

All pairs and areas are optimized together as one summed loss (the problems share no
parameter, so they stay independent), `chunk_size` pairs at a time (chunk_size * len(areas)
images per pass). The area weight is calibrated, as in TorchRay, for classifiers whose logits
move by several units when the object is blurred away; with flatter logits the area term wins
and the mask follows the initial noise instead of the evidence.
"""

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wysiwyc.attribution import common

PAPER_AREAS = (0.05, 0.1, 0.2, 0.3)
REWARDS = ('contrastive', 'logit')


def mask_from_parameters(params: jnp.ndarray, height: int, width: int,
                         smoothing: float) -> jnp.ndarray:
  """(N,h,w) parameters -> (N,H,W) smooth masks in [0,1]."""
  clipped = jnp.clip(params, 0.0, 1.0)[..., None]
  smooth = common.gaussian_blur(clipped, smoothing)[..., 0]
  return jnp.clip(jax.image.resize(smooth, (params.shape[0], height, width), 'bilinear'), 0, 1)


def area_reference(num_pixels: int, area: float) -> np.ndarray:
  """Sorted (ascending) target values: the last round(area * HW) are 1, the rest 0."""
  reference = np.zeros(num_pixels, np.float32)
  ones = int(round(area * num_pixels))
  if ones:
    reference[-ones:] = 1.0
  return reference


def _reward(logits: jnp.ndarray, classes: jnp.ndarray, kind: str) -> jnp.ndarray:
  own = jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]
  if kind == 'logit':
    return own
  others = jnp.where(jax.nn.one_hot(classes, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return own - others.max(-1)


@functools.partial(jax.jit, static_argnames=(
    'classifier', 'areas', 'num_iterations', 'learning_rate', 'momentum', 'step', 'smoothing',
    'blur_sigma', 'area_weight', 'area_weight_growth', 'reward', 'init_noise'))
def optimize_masks(classifier: common.Classifier, variables, images, classes, keys, *,
                   areas: Sequence[float], num_iterations: int, learning_rate: float,
                   momentum: float, step: int,
                   smoothing: float, blur_sigma: float, area_weight: float,
                   area_weight_growth: float, reward: str, init_noise: float) -> jnp.ndarray:
  """Optimized masks (P,A,H,W) for P (image, class) pairs: images (P,H,W,3), classes (P,),
  keys (P,) for the initial tie-breaking noise."""
  num_pairs, height, width = images.shape[:3]
  num_areas = len(areas)
  blurred = common.gaussian_blur(images, blur_sigma)
  references = jnp.asarray(np.stack([area_reference(height * width, a) for a in areas]))
  tiled = lambda x: jnp.repeat(x, num_areas, axis=0)  # pair-major: index = pair * A + area
  images_t, blurred_t, classes_t = tiled(images), tiled(blurred), tiled(classes)
  references_t = jnp.tile(references, (num_pairs, 1))

  def loss_fn(params, weight):
    masks = mask_from_parameters(params, height, width, smoothing)
    kept = masks[..., None] * images_t + (1.0 - masks[..., None]) * blurred_t
    rewards = _reward(classifier.logits(variables, kept), classes_t, reward)
    area_terms = jnp.mean((jnp.sort(masks.reshape(masks.shape[0], -1), axis=-1)
                           - references_t) ** 2, axis=-1)
    # Summed, not averaged, over the independent problems: each keeps its own gradient scale.
    return jnp.sum(-rewards + weight * area_terms)

  # TorchRay's SGD (momentum 0.9, dampening 0.9) is optax's momentum SGD with lr * (1 - 0.9).
  optimizer = optax.sgd(learning_rate * (1.0 - momentum), momentum=momentum)
  grid = (math.ceil(height / step), math.ceil(width / step))
  # TorchRay starts from 1 everywhere (the whole image kept). A little noise breaks the ties
  # of the sort at random instead of in raster order, which would otherwise favour the
  # bottom rows whenever the reward's gradient is weak.
  noise = jax.vmap(lambda k: jax.random.uniform(k, (num_areas,) + grid))(keys)
  params = 1.0 - init_noise * noise.reshape((num_pairs * num_areas,) + grid)

  def update(carry, t):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, area_weight * area_weight_growth ** t)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (jnp.clip(optax.apply_updates(params, updates), 0.0, 1.0), opt_state), None

  (params, _), _ = jax.lax.scan(update, (params, optimizer.init(params)),
                                jnp.arange(num_iterations, dtype=jnp.float32))
  masks = mask_from_parameters(params, height, width, smoothing)
  return masks.reshape(num_pairs, num_areas, height, width)


@functools.partial(jax.jit, static_argnames=('classifier', 'blur_sigma'))
def select_area(classifier: common.Classifier, variables, images, classes, masks, *,
                blur_sigma: float) -> jnp.ndarray:
  """(P,H,W): per pair, the mask of the smallest area whose kept image scores >= the original."""
  num_pairs, num_areas = masks.shape[:2]
  blurred = common.gaussian_blur(images, blur_sigma)
  kept = (masks[..., None] * images[:, None] + (1.0 - masks[..., None]) * blurred[:, None])
  logits = classifier.logits(variables, kept.reshape((-1,) + images.shape[1:]))
  own = jnp.take_along_axis(logits.reshape(num_pairs, num_areas, -1),
                            classes[:, None, None], axis=-1)[..., 0]
  original = jnp.take_along_axis(classifier.logits(variables, images), classes[:, None],
                                 axis=-1)
  good = own >= original
  chosen = jnp.where(good.any(-1), jnp.argmax(good, axis=-1), num_areas - 1)
  return jnp.take_along_axis(masks, chosen[:, None, None, None], axis=1)[:, 0]


def default_hyperparameters(height: int) -> dict:
  """The authors' 224-pixel settings scaled to the image side."""
  step = max(1, round(7 * height / 224))
  return {'step': step, 'smoothing': 21.0 * height / 224 / step, 'blur_sigma': 20.0 * height / 224}


def extremal_perturbation(classifier: common.Classifier, variables, images, *, key=None,
                          areas: Sequence[float] = PAPER_AREAS, num_iterations: int = 800,
                          learning_rate: float = 0.01, momentum: float = 0.9,
                          step: Optional[int] = None,
                          smoothing: Optional[float] = None, blur_sigma: Optional[float] = None,
                          area_weight: float = 300.0, area_weight_growth: float = 1.0035,
                          reward: str = 'contrastive', init_noise: float = 0.01,
                          chunk_size: int = 8, normalize: bool = True,
                          classes: Optional[np.ndarray] = None) -> jnp.ndarray:
  """Extremal-perturbation masks of every class: (B,H,W,C) in [0,1].

  `classes` (B,C) bool, if given, restricts the optimization to those (image, class) pairs
  (the authors explain only the ground-truth classes); the other maps are 0. The work is split
  into chunks of `chunk_size` pairs (the last one padded), one compiled program for all.
  `init_noise` (0: TorchRay's exact start) perturbs the initial all-ones mask, from `key`.
  """
  key = common.default_key(key)
  common.check_images(images)
  if reward not in REWARDS:
    raise ValueError(f'Unknown reward {reward!r}; choose one of {REWARDS}.')
  areas = tuple(sorted(float(a) for a in areas))
  b, height, width = images.shape[:3]
  defaults = default_hyperparameters(height)
  options = dict(
      areas=areas, num_iterations=num_iterations, learning_rate=learning_rate, momentum=momentum,
      step=step or defaults['step'],
      smoothing=float(defaults['smoothing'] if smoothing is None else smoothing),
      blur_sigma=float(defaults['blur_sigma'] if blur_sigma is None else blur_sigma),
      area_weight=area_weight, area_weight_growth=area_weight_growth, reward=reward,
      init_noise=init_noise)
  logits_shape = jax.eval_shape(lambda x: classifier.logits(variables, x), images[:1])
  num_classes = logits_shape.shape[-1]
  wanted = np.ones((b, num_classes), bool) if classes is None else np.asarray(classes) > 0.5
  pairs = np.argwhere(wanted)  # (P,2): image, class
  result = np.zeros((b, height, width, num_classes), np.float32)
  if not len(pairs):
    return jnp.asarray(result)
  chunk_size = min(chunk_size, len(pairs))
  padded = np.concatenate([pairs, np.repeat(pairs[-1:], -len(pairs) % chunk_size, axis=0)])
  images = jnp.asarray(images)
  for start in range(0, len(pairs), chunk_size):
    chunk = padded[start:start + chunk_size]
    chunk_images = images[chunk[:, 0]]
    chunk_classes = jnp.asarray(chunk[:, 1], jnp.int32)
    # Pair (b, c) draws its noise from fold_in(key, b * C + c): independent of the chunking.
    chunk_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.asarray(chunk[:, 0] * num_classes + chunk[:, 1], jnp.int32))
    masks = optimize_masks(classifier, variables, chunk_images, chunk_classes, chunk_keys,
                           **options)
    final = np.asarray(select_area(classifier, variables, chunk_images, chunk_classes, masks,
                                   blur_sigma=options['blur_sigma']))
    real = min(chunk_size, len(pairs) - start)
    result[chunk[:real, 0], :, :, chunk[:real, 1]] = final[:real]
  out = jnp.asarray(result)
  return common.normalize_maps(out) if normalize else out
