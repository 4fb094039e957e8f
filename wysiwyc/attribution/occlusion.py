"""Occlusion (Zeiler & Fergus 2014): the score drop when a square window is filled.

    A_c(p) = mean over windows W containing p of  score_c(x) - score_c(x with W filled)

Windows of `window` x `window` pixels start every `stride` pixels; one more row and column of
windows is added at the far edges when the stride does not reach them, so every pixel is
covered. The fill value 0 is the mean colour of normalized images. `chunk_size` windows are
scored at a time (B * chunk_size images per forward pass).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc.attribution import common


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
  """Start offsets along one axis: every `stride`, plus `size - window` if not reached."""
  if not 1 <= window <= size or stride < 1:
    raise ValueError(f'Need 1 <= window <= image side and stride >= 1; got window={window}, '
                     f'side={size}, stride={stride}.')
  starts = list(range(0, size - window + 1, stride))
  if starts[-1] != size - window:
    starts.append(size - window)
  return np.asarray(starts, np.int32)


@functools.partial(jax.jit, static_argnames=('classifier', 'window', 'stride', 'fill_value',
                                             'chunk_size', 'output', 'normalize'))
def occlusion(classifier: common.Classifier, variables, images, *, key=None, window: int = 8,
              stride: int = 4, fill_value: float = 0.0, chunk_size: int = 32,
              output: str = 'probabilities', normalize: bool = True) -> jnp.ndarray:
  """Occlusion maps of every class: (B,H,W,C); [0,1] per (image, class) if `normalize`."""
  del key  # deterministic
  common.check_images(images)
  b, height, width = images.shape[:3]
  ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
  starts = jnp.asarray(np.stack(np.meshgrid(ys, xs, indexing='ij'), -1).reshape(-1, 2))
  rows, cols = jnp.arange(height), jnp.arange(width)
  base = classifier.scores(variables, images, output)  # (B,C)

  def chunk(indices, valid):
    y0, x0 = starts[jnp.minimum(indices, starts.shape[0] - 1)].T
    inside = (((rows[None, :] >= y0[:, None]) & (rows[None, :] < y0[:, None] + window))[:, :, None]
              & ((cols[None, :] >= x0[:, None]) & (cols[None, :] < x0[:, None] + window))[:, None])
    inside = inside & valid[:, None, None]  # (K,H,W)
    occluded = jnp.where(inside[None, ..., None], fill_value, images[:, None])  # (B,K,H,W,3)
    scores = classifier.scores(variables, occluded.reshape((-1,) + images.shape[1:]), output)
    drop = (base[:, None] - scores.reshape(b, indices.shape[0], -1)) * valid[None, :, None]
    weights = inside.astype(jnp.float32)
    return jnp.einsum('bkc,khw->bhwc', drop, weights), weights.sum(0)

  total, count = common.sum_over_chunks(chunk, int(starts.shape[0]), chunk_size)
  return common.maybe_normalize(total / jnp.maximum(count, 1.0)[None, :, :, None], normalize)
