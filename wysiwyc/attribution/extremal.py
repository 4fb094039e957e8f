"""Extremal Perturbations (Fong, Patrick & Vedaldi 2019): the preservation game, as in TorchRay.

For each (image, class) pair and each target area a, mask parameters p are optimized so that the
image that keeps the mask m(p) and blurs the rest scores high for the class, while the sorted
values of m stay close to a step with a * H * W ones:

    energy_a(p) = reward(perturb(x, m(p))) - lambda_t * mean((sort(m(p)) - r_a)^2)

maximized with lambda_t = area_weight * area_weight_growth^t (300 * 1.0035^t). As TorchRay's
`extremal_perturbation` (variant 'preserve', perturbation 'blur', contrastive reward):

- m(p): parameters on a grid of ceil(H/step) x ceil(W/step) cells, all 1 at the start; each
  cell is a bump of radius `sigma` px (flat to sigma/2), and a pixel takes the smooth max
  (softmax of coldness 20) of the bumps of the cells around it, so a kept region is a plateau
  of 1s of any size. The mask extends `sigma` px past every border and the sort runs over that
  margin too: a region at the border pays for what spills over it.
- perturb(x, m): a pyramid of `num_levels` blurs of x, sigma_l = max_blur * (1 - l/(L-1)), the
  last level x itself; a pixel of mask value m is read at level m*(L-1), linearly interpolated.
- reward: 'contrastive' is logit_c - max over the other classes; 'logit' is logit_c. With
  `jitter`, every other step shows the classifier the images flipped left-right (this assumes
  a flip-invariant classifier; turn it off otherwise).
- torch's SGD, momentum and dampening 0.9, lr 0.01; parameters clipped to [0,1] after each step.
- Final mask per pair, as in the paper: the smallest area whose perturbed image scores at least
  as high (logit) as the original image, else the largest area.

Deliberate departures from TorchRay: area a means a * H * W ones in the reference (TorchRay: a
fraction a of the mask with its margin, ~1.35x more pixels); the blur pads by repeating the
edge, kernel cut at 3 sigma (`common.gaussian_blur`; TorchRay: zeros, 4 sigma); step, sigma
and max_blur default to the authors' 224-pixel values (7, 21, 20) scaled to the image side;
the returned mask is moved by `tie_break` (1e-3) towards itself blurred with sigma = 0.09 *
side, the smoothing of TorchRay's pointing benchmark, so that a plateau of 1s peaks at its
centre and not at its first pixel in raster order; `init_noise` > 0 (default 0, TorchRay's
start) subtracts init_noise * U(0,1), drawn from `key`, from the initial parameters. All pairs
and areas are optimized together as one summed energy (the problems share no parameter, so
they stay independent), `chunk_size` pairs at a time.
"""

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc.attribution import common

PAPER_AREAS = (0.05, 0.1, 0.2, 0.3)
REWARDS = ('contrastive', 'logit')
COLDNESS = 20.0  # of the smooth max over the cells around a pixel (TorchRay's MaskGenerator)
POINTING_SMOOTHING = 0.09  # TorchRay's benchmark blurs its maps by 0.09 * side before the argmax


class AxisGeometry(NamedTuple):
  """One axis of TorchRay's mask generator (sizes in cells or pixels)."""
  cells: int    # parameters along the axis: ceil(size / step)
  padding: int  # zero cells added on each side before gathering neighbours
  window: int   # neighbouring cells per pixel: 2 * radius + 1
  mid: int      # cell positions gathered: cells + 2 * padding - window + 1
  out: int      # mask pixels, with a margin of sigma px before the image: step * mid - step + 1


def axis_geometry(size: int, step: int, sigma: float) -> AxisGeometry:
  """The layout of the mask along one image axis of `size` pixels."""
  cells = math.ceil(size / step)
  padding = 1 + math.ceil(2 * sigma / step)  # TorchRay: margin (= sigma) + sigma
  window = 2 * (1 + math.ceil(sigma / step)) + 1
  mid = cells + 2 * padding - window + 1
  return AxisGeometry(cells, padding, window, mid, step * mid - step + 1)


def bump(distance: np.ndarray) -> np.ndarray:
  """A cell's weight at `distance` (in units of sigma): 1 up to 1/2, then a Gaussian fall."""
  return np.exp(-2.0 * np.maximum(distance - 0.5, 0.0) ** 2)


def neighbour_weights(rows: AxisGeometry, cols: AxisGeometry, step: int,
                      sigma: float) -> np.ndarray:
  """(window^2, step, step): the bump of each neighbouring cell of a pixel, by the pixel's
  position in its step x step block (the only thing the weights depend on).

  Pixel u = step * j + r (margin included) reads cells j + k - padding, k < window, centred at
  margin + step * cell pixels (margin = sigma).
  """
  def offsets(axis: AxisGeometry):  # (window, step): pixel minus cell centre
    return (np.arange(step)[None, :] - sigma
            - step * (np.arange(axis.window)[:, None] - axis.padding)).astype(np.float64)

  dy, dx = offsets(rows), offsets(cols)
  distance = np.sqrt(dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2) / sigma
  return bump(distance).reshape(rows.window * cols.window, step, step).astype(np.float32)


def full_masks(params: jnp.ndarray, height: int, width: int, step: int,
               sigma: float) -> jnp.ndarray:
  """(N,h,w) parameters -> (N, rows.out, cols.out) masks in [0,1], margin included."""
  rows, cols = axis_geometry(height, step, sigma), axis_geometry(width, step, sigma)
  padded = jnp.pad(params, ((0, 0), (rows.padding,) * 2, (cols.padding,) * 2))
  gathered = jnp.stack([padded[:, i:i + rows.mid, j:j + cols.mid]
                        for i in range(rows.window) for j in range(cols.window)], axis=1)
  weights = jnp.asarray(neighbour_weights(rows, cols, step, sigma))
  terms = gathered[:, :, :, None, :, None] * weights[:, None, :, None, :]  # (N,K,mid,r,mid,r)
  # Softmax of coldness 20 over the K terms, written out: terms lie in [0,1], so exp cannot
  # overflow and no max needs subtracting.
  scores = jnp.exp(COLDNESS * terms)
  smooth_max = jnp.sum(terms * scores, axis=1) / jnp.sum(scores, axis=1)
  smooth_max = smooth_max.reshape(params.shape[0], step * rows.mid, step * cols.mid)
  return jnp.clip(smooth_max[:, :rows.out, :cols.out], 0.0, 1.0)


def crop_to_image(masks: jnp.ndarray, height: int, width: int, sigma: float) -> jnp.ndarray:
  """Drops the margin (round(sigma) px, as TorchRay) of (N, out_rows, out_cols) masks: (N,H,W)."""
  margin = round(sigma)
  return masks[:, margin:margin + height, margin:margin + width]


def mask_from_parameters(params: jnp.ndarray, height: int, width: int, step: int,
                         sigma: float) -> jnp.ndarray:
  """(N,h,w) parameters -> (N,H,W) smooth masks in [0,1] over the image."""
  return crop_to_image(full_masks(params, height, width, step, sigma), height, width, sigma)


def area_reference(num_pixels: int, area: float,
                   image_pixels: Optional[int] = None) -> np.ndarray:
  """Sorted (ascending) targets for `num_pixels` mask values: the last round(area * image_pixels)
  are 1 (image_pixels: by default num_pixels), the rest 0."""
  reference = np.zeros(num_pixels, np.float32)
  ones = min(num_pixels, int(round(area * (image_pixels or num_pixels))))
  if ones:
    reference[-ones:] = 1.0
  return reference


def blur_pyramid(images: jnp.ndarray, num_levels: int, max_blur: float) -> jnp.ndarray:
  """(L,N,H,W,3): level l blurred with sigma max_blur * (1 - l/(L-1)); the last is `images`."""
  return jnp.stack([common.gaussian_blur(images, max_blur * (1.0 - level / (num_levels - 1)))
                    for level in range(num_levels)])


def perturb(pyramid: jnp.ndarray, masks: jnp.ndarray) -> jnp.ndarray:
  """Pyramid (L,P,H,W,3), masks (P,A,H,W) -> (P,A,H,W,3): each pixel read at level m*(L-1)."""
  num_levels = pyramid.shape[0]
  levels = jnp.arange(num_levels, dtype=masks.dtype).reshape((num_levels, 1, 1, 1, 1))
  weights = jax.nn.relu(1.0 - jnp.abs(masks[None] * (num_levels - 1) - levels))
  return jnp.einsum('lpahw,lphwc->pahwc', weights, pyramid)


def _reward(logits: jnp.ndarray, classes: jnp.ndarray, kind: str) -> jnp.ndarray:
  own = jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]
  if kind == 'logit':
    return own
  others = jnp.where(jax.nn.one_hot(classes, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return own - others.max(-1)


def sgd_step(params, velocity, grads, first, learning_rate: float, momentum: float):
  """torch.optim.SGD with dampening = momentum: the buffer starts at the first gradient."""
  velocity = jnp.where(first, grads, momentum * velocity + (1.0 - momentum) * grads)
  return jnp.clip(params - learning_rate * velocity, 0.0, 1.0), velocity


@functools.partial(jax.jit, static_argnames=(
    'classifier', 'areas', 'num_iterations', 'learning_rate', 'momentum', 'step', 'sigma',
    'max_blur', 'num_levels', 'area_weight', 'area_weight_growth', 'reward', 'jitter',
    'init_noise'))
def optimize_masks(classifier: common.Classifier, variables, images, classes, keys, *,
                   areas: Sequence[float], num_iterations: int, learning_rate: float,
                   momentum: float, step: int, sigma: float, max_blur: float, num_levels: int,
                   area_weight: float, area_weight_growth: float, reward: str, jitter: bool,
                   init_noise: float) -> jnp.ndarray:
  """Optimized masks (P,A,H,W) for P (image, class) pairs: images (P,H,W,3), classes (P,),
  keys (P,) for the initial noise (if init_noise > 0)."""
  num_pairs, height, width = images.shape[:3]
  num_areas = len(areas)
  pyramid = blur_pyramid(images, num_levels, max_blur)
  rows, cols = axis_geometry(height, step, sigma), axis_geometry(width, step, sigma)
  references = jnp.asarray(np.stack([area_reference(rows.out * cols.out, a, height * width)
                                     for a in areas]))
  classes_t = jnp.repeat(classes, num_areas)  # pair-major: index = pair * A + area

  def energy(params, t):
    masks = full_masks(params, height, width, step, sigma)
    kept = perturb(pyramid, crop_to_image(masks, height, width, sigma).reshape(
        (num_pairs, num_areas, height, width))).reshape((-1, height, width, 3))
    if jitter:
      kept = jnp.where(t % 2 == 0, kept[:, :, ::-1], kept)
    rewards = _reward(classifier.logits(variables, kept), classes_t, reward)
    sorted_masks = jnp.sort(masks.reshape(masks.shape[0], -1), axis=-1)
    area_terms = jnp.mean((sorted_masks.reshape(num_pairs, num_areas, -1) - references) ** 2, -1)
    weight = area_weight * area_weight_growth ** t.astype(jnp.float32)
    return jnp.sum(rewards) - weight * jnp.sum(area_terms)

  def update(carry, t):
    params, velocity = carry
    grads = jax.grad(lambda p: -energy(p, t))(params)
    return sgd_step(params, velocity, grads, t == 0, learning_rate, momentum), None

  noise = jax.vmap(lambda k: jax.random.uniform(k, (num_areas, rows.cells, cols.cells)))(keys)
  params = 1.0 - init_noise * noise.reshape((num_pairs * num_areas, rows.cells, cols.cells))
  (params, _), _ = jax.lax.scan(update, (params, jnp.zeros_like(params)),
                                jnp.arange(num_iterations))
  masks = mask_from_parameters(params, height, width, step, sigma)
  return masks.reshape(num_pairs, num_areas, height, width)


@functools.partial(jax.jit, static_argnames=('classifier', 'max_blur', 'num_levels'))
def select_area(classifier: common.Classifier, variables, images, classes, masks, *,
                max_blur: float, num_levels: int) -> jnp.ndarray:
  """(P,H,W): per pair, the mask of the smallest area whose kept image scores >= the original."""
  num_pairs, num_areas = masks.shape[:2]
  kept = perturb(blur_pyramid(images, num_levels, max_blur), masks)
  logits = classifier.logits(variables, kept.reshape((-1,) + images.shape[1:]))
  own = jnp.take_along_axis(logits.reshape(num_pairs, num_areas, -1),
                            classes[:, None, None], axis=-1)[..., 0]
  original = jnp.take_along_axis(classifier.logits(variables, images), classes[:, None],
                                 axis=-1)
  good = own >= original
  chosen = jnp.where(good.any(-1), jnp.argmax(good, axis=-1), num_areas - 1)
  return jnp.take_along_axis(masks, chosen[:, None, None, None], axis=1)[:, 0]


def break_ties(masks: jnp.ndarray, weight: float) -> jnp.ndarray:
  """(N,H,W) masks, each moved by `weight` towards itself blurred with sigma = 0.09 * side:
  a plateau of 1s then peaks at its centre, not at its first pixel in raster order."""
  if weight <= 0:
    return masks
  sigma = POINTING_SMOOTHING * min(masks.shape[1:])
  return (1.0 - weight) * masks + weight * common.gaussian_blur(masks[..., None], sigma)[..., 0]


def default_hyperparameters(height: int) -> dict:
  """The authors' 224-pixel settings (step 7, sigma 21, max blur 20) scaled to the image side."""
  scale = height / 224
  return {'step': max(1, round(7 * scale)), 'sigma': 21.0 * scale, 'max_blur': 20.0 * scale}


def extremal_perturbation(classifier: common.Classifier, variables, images, *, key=None,
                          areas: Sequence[float] = PAPER_AREAS, num_iterations: int = 800,
                          learning_rate: float = 0.01, momentum: float = 0.9,
                          step: Optional[int] = None, sigma: Optional[float] = None,
                          max_blur: Optional[float] = None, num_levels: int = 8,
                          area_weight: float = 300.0, area_weight_growth: float = 1.0035,
                          reward: str = 'contrastive', jitter: bool = True,
                          init_noise: float = 0.0, tie_break: float = 1e-3,
                          chunk_size: int = 8, normalize: bool = True,
                          classes: Optional[np.ndarray] = None) -> jnp.ndarray:
  """Extremal-perturbation masks of every class: (B,H,W,C) in [0,1].

  `classes` (B,C) bool, if given, restricts the optimization to those (image, class) pairs
  (the authors explain only the ground-truth classes); the other maps are 0. The work is split
  into chunks of `chunk_size` pairs (the last one padded), one compiled program for all.
  `init_noise` > 0 perturbs the initial all-ones parameters, from `key` (else `key` is unused).
  `tie_break` (0: none) orders the pixels of a plateau by their distance to its edge.
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
      step=step or defaults['step'], sigma=float(sigma or defaults['sigma']),
      max_blur=float(defaults['max_blur'] if max_blur is None else max_blur),
      num_levels=num_levels, area_weight=area_weight, area_weight_growth=area_weight_growth,
      reward=reward, jitter=jitter, init_noise=init_noise)
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
    final = np.asarray(break_ties(select_area(
        classifier, variables, chunk_images, chunk_classes, masks, max_blur=options['max_blur'],
        num_levels=options['num_levels']), tie_break))
    real = min(chunk_size, len(pairs) - start)
    result[chunk[:real, 0], :, :, chunk[:real, 1]] = final[:real]
  out = jnp.asarray(result)
  return common.normalize_maps(out) if normalize else out
