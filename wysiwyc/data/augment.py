"""Object masking: a training augmentation of the classifier that uses the known object masks.

A classifier that must be explained by masking (the Explainer keeps `m * x` and drops
`(1 - m) * x`) should read a masked-out region as "nothing there". On data where the class is
the object's outline (the synthetic shapes), it does not by itself: a dropped star leaves a
star-shaped hole, and the hole is classified as a star (experiments/silhouette_leak.py). Masking
some training images the way the Explainer will teaches it otherwise, as Cutout / Random Erasing
teach real classifiers that erased regions carry no evidence. Per image, with probability
`probability`, a random subset of the present classes is chosen (each class with probability
1/2) and their objects' masks, grown by a random 0..`max_margin` pixels, are used either to
*drop* those objects (the image outside the mask is kept; their labels are cleared) or to
*keep* them alone (the image outside the mask is zeroed; only their labels stay), one or the
other with equal odds. Zero is the value the Explainer's masks multiply in, the data set's mean
colour after standardization.
"""

import chex
import jax
import jax.numpy as jnp


def dilate(masks: jnp.ndarray, radius: int) -> jnp.ndarray:
  """(B,H,W) masks grown by `radius` pixels (max over a (2r+1)x(2r+1) square)."""
  if radius == 0:
    return masks
  size = 2 * radius + 1
  return jax.lax.reduce_window(masks, -jnp.inf, jax.lax.max, (1, size, size), (1, 1, 1), 'SAME')


def mask_objects(rng: jax.Array, images: jnp.ndarray, labels: jnp.ndarray,
                 class_masks: jnp.ndarray, probability: float, max_margin: int = 3
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(images, labels) with object masking applied (module docstring); pure and jittable.

  images (B,H,W,3) standardized, labels (B,C) multi-hot, class_masks (B,H,W,C) in {0,1}.
  """
  chex.assert_rank([images, labels, class_masks], [4, 2, 4])
  batch = images.shape[0]
  rng_apply, rng_classes, rng_drop, rng_margin = jax.random.split(rng, 4)
  applied = jax.random.bernoulli(rng_apply, probability, (batch,))
  chosen = jax.random.bernoulli(rng_classes, 0.5, labels.shape) & (labels > 0.5)
  drop = jax.random.bernoulli(rng_drop, 0.5, (batch,))
  union = jnp.max(class_masks * chosen[:, None, None, :], axis=-1)
  margins = jax.random.randint(rng_margin, (batch,), 0, max_margin + 1)
  grown = jnp.stack([dilate(union, r) for r in range(max_margin + 1)])  # (R,B,H,W)
  region = jnp.take_along_axis(grown, margins[None, :, None, None], axis=0)[0]
  keep_region = jnp.where(drop[:, None, None], 1.0 - region, region)
  new_labels = jnp.where(drop[:, None], labels * ~chosen, labels * chosen)
  masked_images = images * keep_region[..., None]
  return (jnp.where(applied[:, None, None, None], masked_images, images),
          jnp.where(applied[:, None], new_labels, labels))
