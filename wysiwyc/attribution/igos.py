"""iGOS++ (Khorram, Lawson & Fuxin, CHIL 2021): masks optimized with integrated gradients
along deletion and insertion paths, with bilateral total variation.

Per (image, class) pair, with x the image, b its blurred copy (the baseline), s the class's
probability (`Classifier.probabilities`), n = `integration_steps` and t_k = k/n (k = 1..n), an
upsampled mask u (H,W) in [0,1] (1 keeps x) is scored along two straight paths:

    del(u) = mean_k s(b + t_k u (x - b) + e)   baseline -> x*u + b*(1-u): u = 0 deletes x
    ins(u) = mean_k s(x + t_k u (b - x) + e)   image -> b*u + x*(1-u): u = 0 inserts x

(e ~ N(0, noise_std^2) per path image); their gradients in u are integrated gradients. iGOS++
optimizes two masks, D (deletion) and I (insertion), on a `mask_size` x `mask_size` grid, both
starting at 1 and upsampled bilinearly with aligned corners (torch's UpsamplingBilinear2d);
their product M = D * I is the explanation, tied to both by the objective per pair:

    L = del(D) - ins(I) + del(U_D U_I) - ins(U_D U_I) + l1 * mean(1 - M) + tv * BTV(x, M)
    BTV = 1/2 (mean (dM)^2 over the grid's neighbours + mean w (dU_M)^2 over the image's)

with U_. the upsampled masks and w = exp(-mean_c (dx)^2 / bilateral_sigma) the colour weight
of each pair of neighbouring pixels (the mask may change where the image does). Each of
`num_iterations` steps moves (D, I) along g = 1/2 grad(the four score terms) + grad(the two
regularizers) (the authors halve the scores' gradient to balance the regularizers) by a step
from Armijo backtracking on L of the projected point P(alpha) = clip((D, I) - alpha g, 0, 1):
alpha = step_size * step_decay^j for the smallest j with
L(P(alpha)) <= L(D, I) - armijo * <g, (D, I) - P(alpha)>, the search ending at the first alpha
below min_step (taken anyway); then (D, I) <- P(alpha). One alpha per pair. The map is
1 - upsample(M): the evidence is where the masks delete or insert. optax's backtracking line
search does not fit: it tests the unprojected point, with one alpha for all parameters, along
the gradient of the tested function (here half of it).

Defaults are the published `iGOS_pp` function's (github.com/khorrams/IGOS_pp, methods.py):
mask 28 x 28 at 224 px, 15 iterations, 20 integration steps, tv 20, step 1000, armijo 1e-4,
decay 0.2, min step 1e-5, noise 0.2, BTV sigma 0.01 (on normalized images), except for the
grid and l1 on small images. Departures from the published code:
- Grid: ceil(side * 28 / 224) cells a side, but at least 16 (at most the side); l1 3 (the
  function's default is 1, the authors' README command for classifiers uses 10). On the
  synthetic 64-px images (objects 16-22 px) the scaled grid, 8 cells 9 px apart, leaves 2-3
  cells across an object: bilinear blobs that peak beside it, or plateaus of fully removed
  cells (M = 0) whose first pixel in raster order lies outside it; a weak l1 leaves the
  plateaus that the first, large step cuts. Pointing game, strict / within 4.3 px, on test
  images 0-15 (31 (image, present class) pairs, zoo:synthetic_shapes_cnn): grid 8, l1 1:
  0.19 / 0.68; grid 8, l1 10: 0.42 / 0.77; grid 16, l1 1: 0.32 / 0.81; grid 16, l1 3:
  0.68 / 0.90; grid 16, l1 10: 0.65 / 0.87; the defaults on test images 16-31 (36 pairs):
  0.42 / 0.92 (most strict misses peak 1-3 px outside the object). A larger l1 has a limit:
  at the start a cell leaves 1 only if its share of the scores' gradient beats l1 / cells, so
  evidence spread over more than about 1 / l1 of the image leaves the masks at 1 and the map
  empty (on the 14% square of tests/test_igos.py, l1 5 works and 7 does not).
- Baseline: the authors blur with cv2.GaussianBlur(ksize 51, sigma 50) at 224 px, nearly a
  51-pixel box; here a Gaussian of that box's standard deviation (51 / sqrt(12) = 14.7 px at
  224), scaled to the image side.
- Weights scaled to the grid (defaults; mask_size r): tv 20 * r / 28 and step 1000 * (r / 28)^2.
  Every term's gradient in one cell shrinks as 1 / r^2 (a cell covers 1 / r^2 of the image),
  so the step scaled by r^2 moves the masks as the published step moves 28 x 28 ones (the same
  trial ladder: 327, 65, 13, 2.6 ... at r = 16); and the TV of a given shape grows as
  1 / r, so tv scaled by r keeps its balance with the area and score terms.
- Armijo's decrease is measured along the projected step (Bertsekas' rule), where the
  published code takes armijo * alpha * |g|^2. They agree where no cell is clipped; but a cell
  held at a bound by a gradient pointing outward (a background cell at 1, pushed up by the
  area term) adds to |g|^2 without moving, so a pair whose scores are flat (an absent class,
  or masks that have converged) failed every test down to min_step: 11-13 evaluations of L
  per iteration for nothing. A step that moves no cell is taken at once.
- Noise: drawn once per (pair, iteration, path) and shared by the gradient and every line-search
  evaluation of that iteration (the authors redraw it at each evaluation), so the Armijo test
  compares like with like and a key gives one result.
- BTV colour weight: exp(-mean_c (dx)^2 / sigma) in both directions (the published code takes
  the channel mean before squaring vertically and after exponentiating horizontally).
- s is `Classifier.probabilities`: a sigmoid for multi-label classifiers (the published code,
  for ImageNet, takes the softmax).
- The published main.py passes its --iterations as the integration steps and --ig_iter as
  the iterations; the function's defaults (15 iterations, 20 steps) are used here.
Pairs are optimized `chunk_size` at a time (4 * n * chunk_size images per pass), the last
chunk padded, one compiled iteration for every chunk and step; pair (b, c) draws its noise
from fold_in(key, b * C + c). Cost per pair: num_iterations x (4n gradient passes + 4n
forward passes per line-search trial).
"""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc.attribution import common

PAPER_SIDE = 224
PAPER_MASK_SIZE = 28
MIN_MASK_SIZE = 16
PAPER_TV_WEIGHT = 20.0
PAPER_STEP_SIZE = 1000.0
# Standard deviation of the authors' 51-pixel, sigma-50 kernel at 224 px (nearly a box).
PAPER_BLUR_SIGMA = 51.0 / math.sqrt(12.0)
NUM_PATHS = 4  # del(D), ins(I), del(D I), ins(D I)


def upsample_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) bilinear interpolation with aligned corners."""
  matrix = np.zeros((size_out, size_in), np.float32)
  if size_in == 1 or size_out == 1:
    matrix[:, 0] = 1.0
    return matrix
  position = np.arange(size_out) * (size_in - 1) / (size_out - 1)
  low = np.minimum(np.floor(position).astype(int), size_in - 2)
  rows = np.arange(size_out)
  matrix[rows, low] = 1.0 - (position - low)
  matrix[rows, low + 1] = position - low
  return matrix


def upsample(masks: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """(N,h,w) grid masks -> (N,H,W)."""
  rows = jnp.asarray(upsample_matrix(masks.shape[1], height))
  cols = jnp.asarray(upsample_matrix(masks.shape[2], width))
  return jnp.einsum('Hh,nhw,Ww->nHW', rows, masks, cols)


def colour_weights(images: jnp.ndarray, sigma: float):
  """exp(-mean_c (dx)^2 / sigma) of vertical (N,H-1,W) and horizontal (N,H,W-1) neighbours."""
  return tuple(jnp.exp(-(jnp.diff(images, axis=axis) ** 2).mean(-1) / sigma) for axis in (1, 2))


def _mean_square_step(a: jnp.ndarray, axis: int, weights=None) -> jnp.ndarray:
  """(N,h,w) -> (N,): mean of weighted squared neighbour differences along `axis` (1 or 2)."""
  if a.shape[axis] < 2:
    return jnp.zeros(a.shape[:1], a.dtype)
  step = jnp.diff(a, axis=axis) ** 2
  return (step if weights is None else weights * step).mean(axis=(1, 2))


def bilateral_tv(grid: jnp.ndarray, upsampled: jnp.ndarray, weights) -> jnp.ndarray:
  """iGOS++'s BTV (exponent 2) of grid masks (N,h,w), upsampled (N,H,W) -> (N,)."""
  on_grid = _mean_square_step(grid, 1) + _mean_square_step(grid, 2)
  on_image = (_mean_square_step(upsampled, 1, weights[0])
              + _mean_square_step(upsampled, 2, weights[1]))
  return 0.5 * (on_grid + on_image)


def path_scores(classifier: common.Classifier, variables, starts, ends, masks, classes,
                noise, num_steps: int) -> jnp.ndarray:
  """mean_k s_class(start + t_k u (end - start) + noise_k) per path: starts and ends (Q,H,W,3),
  masks u (Q,H,W), classes (Q,), noise broadcastable to (Q,n,H,W,3) -> (Q,)."""
  t = jnp.arange(1, num_steps + 1, dtype=jnp.float32) / num_steps
  paths = (starts[:, None] + t[None, :, None, None, None] * masks[:, None, ..., None]
           * (ends - starts)[:, None] + noise)
  probabilities = classifier.probabilities(variables, paths.reshape((-1,) + starts.shape[1:]))
  probabilities = probabilities.reshape(starts.shape[0], num_steps, -1)
  return jnp.take_along_axis(probabilities, classes[:, None, None], axis=-1)[..., 0].mean(-1)


def default_hyperparameters(height: int, width: int, mask_size: Optional[int] = None) -> dict:
  """The published 224-pixel settings scaled to the image side (and the grid's)."""
  side = max(height, width)
  scaled = math.ceil(side * PAPER_MASK_SIZE / PAPER_SIDE)
  mask_size = mask_size or min(side, max(MIN_MASK_SIZE, scaled))
  ratio = mask_size / PAPER_MASK_SIZE
  return {'mask_size': mask_size, 'tv_weight': PAPER_TV_WEIGHT * ratio,
          'step_size': PAPER_STEP_SIZE * ratio ** 2,
          'blur_sigma': PAPER_BLUR_SIGMA * side / PAPER_SIDE}


def objective_terms(classifier: common.Classifier, variables, images, baselines, weights,
                    classes, grids, noise, *, integration_steps: int, l1_weight: float,
                    tv_weight: float):
  """(score terms (P,), regularizers (P,)) of L for grids (P,2,h,w) = [D, I]: images and
  baselines (P,H,W,3), `colour_weights` of the images, classes (P,), noise (4P,n,H,W,3) or 0."""
  num_pairs, height, width = images.shape[:3]
  ups = upsample(grids.reshape((-1,) + grids.shape[2:]), height, width)
  ups = ups.reshape((num_pairs, 2, height, width))
  both = ups[:, 0] * ups[:, 1]
  # Paths del(D), ins(I), del(D I), ins(D I); deletion from b towards x, insertion x towards b.
  starts = jnp.concatenate([baselines, images, baselines, images])
  ends = jnp.concatenate([images, baselines, images, baselines])
  masks = jnp.concatenate([ups[:, 0], ups[:, 1], both, both])
  scores = path_scores(classifier, variables, starts, ends, masks, jnp.tile(classes, NUM_PATHS),
                       noise, integration_steps).reshape(NUM_PATHS, num_pairs)
  scores = scores[0] - scores[1] + scores[2] - scores[3]
  grid = grids[:, 0] * grids[:, 1]
  regularizers = (l1_weight * (1.0 - grid).mean(axis=(1, 2))
                  + tv_weight * bilateral_tv(grid, upsample(grid, height, width), weights))
  return scores, regularizers


def armijo_step(objective, grids, direction, base, *, step_size: float, armijo: float,
                step_decay: float, min_step: float) -> jnp.ndarray:
  """P(alpha) = clip(grids - alpha direction, 0, 1) with, per pair, the first alpha =
  step_size * step_decay^j such that objective(P(alpha)) <= base - armijo * <direction,
  grids - P(alpha)>, or the first below min_step; a pair whose P(alpha) equals its grids (every
  moving cell clipped) takes it at once. objective: (P,...) -> (P,); base (P,)."""
  num_pairs = grids.shape[0]
  moved = lambda alpha: jnp.clip(grids - alpha[:, None, None, None] * direction, 0.0, 1.0)

  def searching(alpha, active):
    candidate = moved(alpha)
    step = grids - candidate
    decrease = armijo * jnp.sum(direction * step, axis=(1, 2, 3))
    # Without the test of `step`, rounding (base and objective are computed apart) can fail an
    # exact tie all the way down to min_step.
    return (active & (alpha >= min_step) & jnp.any(step != 0, axis=(1, 2, 3))
            & (objective(candidate) > base - decrease))

  def body(state):
    alpha, active = state
    alpha = jnp.where(active, alpha * step_decay, alpha)
    return alpha, searching(alpha, active)

  alpha = jnp.full((num_pairs,), step_size, jnp.float32)
  alpha, _ = jax.lax.while_loop(lambda state: jnp.any(state[1]), body,
                                (alpha, searching(alpha, jnp.ones((num_pairs,), bool))))
  return moved(alpha)


def path_noise(keys, iteration, shape, noise_std: float) -> jnp.ndarray:
  """(4P, *shape) noise of one iteration (shape = (n,H,W,3)), or 0; pair p's drawn from
  fold_in(keys[p], iteration)."""
  if noise_std <= 0:
    return jnp.zeros(())
  noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, iteration),
                                               (NUM_PATHS,) + shape))(keys)
  return noise_std * jnp.swapaxes(noise, 0, 1).reshape((-1,) + shape)


@functools.partial(jax.jit, static_argnames=(
    'classifier', 'integration_steps', 'l1_weight', 'tv_weight', 'step_size', 'armijo',
    'step_decay', 'min_step', 'blur_sigma', 'bilateral_sigma', 'noise_std'))
def iterate(classifier: common.Classifier, variables, images, classes, keys, grids, iteration, *,
            integration_steps: int, l1_weight: float, tv_weight: float, step_size: float,
            armijo: float, step_decay: float, min_step: float, blur_sigma: float,
            bilateral_sigma: float, noise_std: float) -> jnp.ndarray:
  """One iteration for P pairs: grids (P,2,h,w) = [D, I] -> the next grids. images (P,H,W,3),
  classes (P,), keys (P,) of the path noise, iteration () int32."""
  terms = functools.partial(
      objective_terms, classifier, variables, images, common.gaussian_blur(images, blur_sigma),
      colour_weights(images, bilateral_sigma), classes, integration_steps=integration_steps,
      l1_weight=l1_weight, tv_weight=tv_weight)
  noise = path_noise(keys, iteration, (integration_steps,) + images.shape[1:], noise_std)

  def direction_objective(grids):
    """Sum over pairs of 1/2 scores + regularizers (its gradient is the step's direction),
    and L per pair."""
    scores, regularizers = terms(grids, noise)
    return jnp.sum(0.5 * scores + regularizers), scores + regularizers

  direction, base = jax.grad(direction_objective, has_aux=True)(grids)
  return armijo_step(lambda g: sum(terms(g, noise)), grids, direction, base,
                     step_size=step_size, armijo=armijo, step_decay=step_decay,
                     min_step=min_step)


def optimize_masks(classifier: common.Classifier, variables, images, classes, keys, *,
                   mask_size: int, num_iterations: int, **options) -> jnp.ndarray:
  """Saliency 1 - upsample(D * I) (P,H,W) for P pairs: images (P,H,W,3), classes (P,), keys
  (P,) for the path noise; `options`: the static arguments of `iterate`.

  The iterations are a host loop over one compiled `iterate`, not a `lax.scan`: XLA:CPU runs
  the gradient of a convolution 6-8x slower inside a loop body (its transposed kernel is left
  in a layout off the fast path; JAX 0.10).
  """
  grids = jnp.ones((images.shape[0], 2, mask_size, mask_size), jnp.float32)
  for i in range(num_iterations):
    grids = iterate(classifier, variables, images, classes, keys, grids, jnp.int32(i),
                    **options)
  return 1.0 - upsample(grids[:, 0] * grids[:, 1], *images.shape[1:3])


def igos_plus_plus(classifier: common.Classifier, variables, images, *, key=None,
                   mask_size: Optional[int] = None, num_iterations: int = 15,
                   integration_steps: int = 20, l1_weight: float = 3.0,
                   tv_weight: Optional[float] = None, step_size: Optional[float] = None,
                   armijo: float = 1e-4, step_decay: float = 0.2, min_step: float = 1e-5,
                   blur_sigma: Optional[float] = None, bilateral_sigma: float = 0.01,
                   noise_std: float = 0.2, chunk_size: int = 8, normalize: bool = True,
                   classes: Optional[np.ndarray] = None) -> jnp.ndarray:
  """iGOS++ saliency of every class: (B,H,W,C) in [0,1] (see the module docstring).

  `classes` (B,C) bool, if given, restricts the optimization to those (image, class) pairs;
  the other maps are 0. None for mask_size, tv_weight, step_size, blur_sigma: the published
  settings scaled to the image side (`default_hyperparameters`).
  """
  key = common.default_key(key)
  common.check_images(images)
  if num_iterations < 0 or integration_steps < 1:
    raise ValueError(f'Need num_iterations >= 0 and integration_steps >= 1; got '
                     f'{num_iterations}, {integration_steps}.')
  b, height, width = images.shape[:3]
  defaults = default_hyperparameters(height, width, mask_size)
  pick = lambda value, name: float(defaults[name] if value is None else value)
  options = dict(
      mask_size=int(defaults['mask_size']), num_iterations=num_iterations,
      integration_steps=integration_steps, l1_weight=float(l1_weight),
      tv_weight=pick(tv_weight, 'tv_weight'), step_size=pick(step_size, 'step_size'),
      armijo=float(armijo), step_decay=float(step_decay), min_step=float(min_step),
      blur_sigma=pick(blur_sigma, 'blur_sigma'), bilateral_sigma=float(bilateral_sigma),
      noise_std=float(noise_std))
  num_classes = jax.eval_shape(lambda x: classifier.logits(variables, x), images[:1]).shape[-1]
  wanted = np.ones((b, num_classes), bool) if classes is None else np.asarray(classes) > 0.5
  pairs = np.argwhere(wanted)  # (P,2): image, class
  result = np.zeros((b, height, width, num_classes), np.float32)
  if not len(pairs):
    return jnp.asarray(result)
  chunk_size = max(1, min(chunk_size, len(pairs)))
  padded = np.concatenate([pairs, np.repeat(pairs[-1:], -len(pairs) % chunk_size, axis=0)])
  images = jnp.asarray(images)
  for start in range(0, len(pairs), chunk_size):
    chunk = padded[start:start + chunk_size]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.asarray(chunk[:, 0] * num_classes + chunk[:, 1], jnp.int32))
    saliency = np.asarray(optimize_masks(classifier, variables, images[chunk[:, 0]],
                                         jnp.asarray(chunk[:, 1], jnp.int32), keys, **options))
    real = min(chunk_size, len(pairs) - start)
    result[chunk[:real, 0], :, :, chunk[:real, 1]] = saliency[:real]
  return common.maybe_normalize(jnp.asarray(result), normalize)
