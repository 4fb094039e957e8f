"""Test helpers for the large models: variables without running `init`.

`module.init` of a ResNet-50 or DeepLabV3 runs one small compiled program per parameter shape
(about a minute on a 2-core CPU); the shapes alone come from `jax.eval_shape` in a second, and
numpy fills them.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def variable_shapes(module, image_size: int = 32):
  return jax.eval_shape(lambda: module.init(jax.random.key(0),
                                            jnp.zeros((1, image_size, image_size, 3))))


def random_variables(module, image_size: int = 32, seed: int = 0) -> dict:
  """Variables of `module` with He-scaled random kernels, random BatchNorm statistics and
  affine parameters near identity (so that activations neither vanish nor explode)."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variable_shapes(module, image_size)))
  out = {}
  for path, leaf in flat.items():
    shape, name = leaf.shape, path[-1]
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    elif name == 'scale':
      value = rng.uniform(0.5, 1.5, shape)
    elif name == 'var':
      value = rng.uniform(0.5, 2.0, shape)
    else:  # biases and means
      value = rng.normal(size=shape) * 0.1
    out[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(out)


def num_params(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
