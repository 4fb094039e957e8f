"""Tests of wysiwyc.attribution.igos (iGOS++) on a classifier whose evidence region is known.

`SquareModel`: the logit of class 0 reads only the energy (mean x^2) inside a fixed square,
class 1 only inside another; the images carry a fine checkerboard there, which the blurred
baseline wipes out, so deleting (or not inserting) the square is what moves each class.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wysiwyc import attribution
from wysiwyc.attribution import igos

SIZE = 32
SQUARES = ((slice(4, 16), slice(4, 16)), (slice(18, 30), slice(16, 28)))  # class 0, class 1
# Few steps; the tests share the compiled programs (chunks of 4 and 3 pairs).
FAST = dict(num_iterations=3, integration_steps=4)


class SquareModel(nn.Module):
  """logit c = scale * (mean over square c of mean_channels x^2 - 1)."""
  scale: float = 4.0

  @nn.compact
  def __call__(self, images, train=False):
    del train
    energy = (images ** 2).mean(-1)
    logits = [energy[:, rows, cols].mean(axis=(1, 2)) for rows, cols in SQUARES]
    return self.scale * (jnp.stack(logits, -1) - 1.0)


def square_indicator(c):
  inside = np.zeros((SIZE, SIZE), bool)
  inside[SQUARES[c]] = True
  return inside


def images_of(n, seed=0):
  """Smooth low-energy backgrounds with a +-2 checkerboard in both squares."""
  rng = np.random.default_rng(seed)
  images = 0.3 * rng.normal(size=(n, 4, 4, 3))
  images = np.repeat(np.repeat(images, SIZE // 4, axis=1), SIZE // 4, axis=2)
  checker = 2.0 * (-1.0) ** np.add.outer(np.arange(SIZE), np.arange(SIZE))
  for rows, cols in SQUARES:
    images[:, rows, cols] = checker[rows, cols][None, ..., None]
  return jnp.asarray(images, jnp.float32)


@pytest.fixture(scope='module')
def square():
  module = SquareModel()
  images = images_of(2)
  return attribution.Classifier(module), module.init(jax.random.key(0), images[:1]), images


def test_registered_as_a_perturbation_method():
  assert attribution.METHODS['igos_plus_plus'] is igos.igos_plus_plus
  assert 'igos_plus_plus' in attribution.PERTURBATION_METHODS


def test_map_of_each_class_covers_its_square_and_not_the_rest(square):
  """Default settings (at 32 px: a 16 x 16 grid, 15 iterations of 20 integration steps)."""
  classifier, variables, images = square
  maps = np.asarray(igos.igos_plus_plus(classifier, variables, images, chunk_size=4))
  for b in range(images.shape[0]):
    for c in range(2):
      inside, values = square_indicator(c), maps[b, :, :, c]
      assert inside.ravel()[np.argmax(values)], (b, c)
      top = np.argsort(-values.ravel())[:inside.sum()]
      assert inside.ravel()[top].mean() >= 0.85, (b, c, inside.ravel()[top].mean())
      # A clear margin: the square's mean well above the rest's.
      assert values[inside].mean() - values[~inside].mean() >= 0.6, (b, c)


def test_chunked_and_unchunked_runs_agree(square):
  classifier, variables, images = square
  run = lambda chunk: np.asarray(igos.igos_plus_plus(
      classifier, variables, images, key=jax.random.key(3), chunk_size=chunk,
      normalize=False, **FAST))
  whole = run(4)
  np.testing.assert_allclose(run(3), whole, atol=1e-5)  # other chunks, the last one padded
  assert np.ptp(whole) > 0.05  # the masks moved


def test_maps_in_range_and_restricted_pairs_are_zero(square):
  classifier, variables, images = square
  maps = np.asarray(igos.igos_plus_plus(classifier, variables, images, chunk_size=4, **FAST))
  assert maps.shape == (2, SIZE, SIZE, 2) and maps.dtype == np.float32
  assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0
  assert np.all(maps.max(axis=(1, 2)) == 1.0)  # every map rescaled to [0,1]
  wanted = np.array([[1, 0], [1, 1]], bool)
  restricted = np.asarray(igos.igos_plus_plus(classifier, variables, images, classes=wanted,
                                              chunk_size=3, **FAST))
  for b, c in np.argwhere(~wanted):
    assert np.all(restricted[b, :, :, c] == 0)
  for b, c in np.argwhere(wanted):
    np.testing.assert_allclose(restricted[b, :, :, c], maps[b, :, :, c], atol=1e-5)


def test_upsampling_aligns_corners_and_interpolates_linearly():
  matrix = igos.upsample_matrix(3, 5)
  np.testing.assert_allclose(matrix.sum(1), 1.0)
  np.testing.assert_allclose(matrix @ np.array([0.0, 1.0, 4.0]), [0, 0.5, 1, 2.5, 4])
  grid = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 4, 4)), jnp.float32)
  up = np.asarray(igos.upsample(grid, 10, 10))
  np.testing.assert_allclose(up[0, ::3, ::3], grid[0], atol=1e-6)  # nodes at 0, 3, 6, 9


def test_armijo_step_backtracks_each_pair_to_a_sufficient_decrease_and_clips():
  """objective: sum (g - target)^2 per pair, from g = 0.5 along the gradient. Pair 0 aims at 0.6
  (alpha 1 overshoots to 0.7, no decrease; alpha 1/2 lands on it), pair 1 at 0.5 (zero
  gradient), pair 2 at 1.5 (alpha 1 is taken, clipped at 1)."""
  targets = jnp.asarray([0.6, 0.5, 1.5])[:, None, None, None]
  objective = lambda g: jnp.sum((g - targets) ** 2, axis=(1, 2, 3))
  grids = jnp.full((3, 2, 3, 3), 0.5)
  moved = igos.armijo_step(objective, grids, 2.0 * (grids - targets), objective(grids),
                           step_size=1.0, armijo=1e-4, step_decay=0.5, min_step=1e-3)
  np.testing.assert_allclose(moved[:, 0, 0, 0], [0.6, 0.5, 1.0], atol=1e-6)
