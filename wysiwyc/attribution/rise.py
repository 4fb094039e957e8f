"""RISE (Petsiuk et al. 2018): saliency as the expected score under random smooth masks.

    S_c = 1 / (N * p1) * sum_i score_c(x * M_i) * M_i

Mask i: a `grid_size` x `grid_size` grid of Bernoulli(p1) cells, bilinearly upsampled to
(grid_size + 1) cells of ceil(H / grid_size) pixels and cropped at a random shift of less than
one cell. Defaults are the RISE paper's (N = 4000, s = 7, p1 = 0.5). Masked pixels become 0, the
mean colour of normalized images. All classes come from the same masked copies; `chunk_size`
masks are scored at a time (B * chunk_size images per forward pass), so memory does not grow
with N. Mask i is drawn from `fold_in(key, i)`, independent of the chunking.
"""

import functools
import math

import jax
import jax.numpy as jnp

from wysiwyc.attribution import common


def rise_mask(key, height: int, width: int, grid_size: int, keep_probability: float):
  """One RISE mask (H,W) in [0,1]."""
  grid_key, shift_key = jax.random.split(key)
  cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
  grid = jax.random.bernoulli(grid_key, keep_probability, (grid_size, grid_size))
  upsampled = jax.image.resize(grid.astype(jnp.float32),
                               ((grid_size + 1) * cell_h, (grid_size + 1) * cell_w), 'bilinear')
  dy = jax.random.randint(shift_key, (), 0, cell_h)
  dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w)
  return jax.lax.dynamic_slice(upsampled, (dy, dx), (height, width))


def rise_masks(key, indices: jnp.ndarray, height: int, width: int, grid_size: int = 7,
               keep_probability: float = 0.5) -> jnp.ndarray:
  """The masks with the given indices (K,) -> (K,H,W); mask i uses `fold_in(key, i)`."""
  return jax.vmap(lambda i: rise_mask(jax.random.fold_in(key, i), height, width, grid_size,
                                      keep_probability))(indices)


@functools.partial(jax.jit, static_argnames=(
    'classifier', 'num_masks', 'grid_size', 'keep_probability', 'chunk_size', 'output',
    'normalize'))
def rise(classifier: common.Classifier, variables, images, *, key=None, num_masks: int = 4000,
         grid_size: int = 7, keep_probability: float = 0.5, chunk_size: int = 32,
         output: str = 'probabilities', normalize: bool = True) -> jnp.ndarray:
  """RISE saliency of every class: (B,H,W,C); [0,1] per (image, class) if `normalize`."""
  common.check_images(images)
  if not 0 < keep_probability <= 1:
    raise ValueError(f'keep_probability must be in (0, 1]; got {keep_probability}.')
  key = common.default_key(key)
  b, height, width = images.shape[:3]

  def chunk(indices, valid):
    masks = rise_masks(key, indices, height, width, grid_size, keep_probability)  # (K,H,W)
    masked = images[:, None] * masks[None, ..., None]  # (B,K,H,W,3)
    scores = classifier.scores(variables, masked.reshape((-1,) + images.shape[1:]), output)
    scores = scores.reshape(b, indices.shape[0], -1) * valid[None, :, None]
    return jnp.einsum('bkc,khw->bhwc', scores, masks)

  saliency = common.sum_over_chunks(chunk, num_masks, chunk_size)
  return common.maybe_normalize(saliency / (num_masks * keep_probability), normalize)
