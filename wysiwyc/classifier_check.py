"""A classifier named by a config, built and checked: a module that cannot be imported, a factory
that cannot be called as `factory(num_classes, **kwargs)`, a module that does not run on images,
and variables that do not fit it are one-line `UserError`s, not tracebacks.

Used before a run writes into its workdir (`run_setup.check_classifier`) and by
`wysiwyc.explain.load`; it does not load TensorFlow.
"""

import importlib
import os
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from wysiwyc import errors
from wysiwyc import models


def _describe(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[-1] if lines else ""}'


def build(name: str, num_classes: int, field: str = 'classifier.name', **kwargs) -> nn.Module:
  """`models.classifiers.build(name, num_classes, **kwargs)`; a `'package.module:factory'` whose
  module does not import, whose factory is missing, or that cannot be called as
  `factory(num_classes=..., **kwargs)` is a `UserError` naming the config field."""
  if ':' in name:
    module_name, attr = name.split(':', 1)
    try:
      module = importlib.import_module(module_name)
    except ImportError as error:
      raise errors.UserError(
          f'{field}={name!r}: module {module_name!r} cannot be imported ({_describe(error)}); '
          f'put the folder that holds it on PYTHONPATH (PYTHONPATH=DIR python -m ...) or '
          'install its package.') from None
    except Exception as error:  # pylint: disable=broad-except  (the user's module failed)
      raise errors.UserError(f'{field}={name!r}: importing {module_name!r} failed '
                             f'({_describe(error)}).') from None
    factory = getattr(module, attr, None)
    if not callable(factory):
      raise errors.UserError(
          f'{field}={name!r}: {module_name} has no function {attr!r} '
          f'({module.__file__}); name a factory(num_classes, **kwargs) -> flax module.')
  try:
    classifier = models.classifiers.build(name, num_classes, **kwargs)
  except TypeError as error:
    raise errors.UserError(
        f'{field}={name!r} cannot be called as factory(num_classes={num_classes}'
        f'{"".join(f", {k}=..." for k in kwargs)}) ({_describe(error)}); a factory takes '
        'num_classes and the config\'s classifier.kwargs as keyword arguments.') from None
  if not isinstance(classifier, nn.Module):
    raise errors.UserError(f'{field}={name!r} returned a {type(classifier).__name__}, not a '
                           'flax.linen.Module.')
  return classifier


def variable_shapes(classifier: nn.Module, image_size: int, field: str = 'classifier.name'
                    ) -> Dict[str, Tuple[int, ...]]:
  """{'params/a/kernel': shape} of the module's variables at `image_size` (no arrays made); a
  module that does not run on (1, size, size, 3) float images with `train=False` is a
  `UserError`."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  try:
    tree = jax.eval_shape(lambda: classifier.init(jax.random.key(0), images, train=False))
  except Exception as error:  # pylint: disable=broad-except  (the user's module failed)
    raise errors.UserError(
        f'{field}: the classifier does not run as module.apply(variables, images, train=False) '
        f'on float images of shape (1,{image_size},{image_size},3) ({_describe(error)}).'
    ) from None
  tree = {k: tree.get(k, {}) for k in ('params', 'batch_stats')}
  return _flat_shapes(tree)


def _flat_shapes(tree) -> Dict[str, Tuple[int, ...]]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = '/'.join(str(getattr(p, 'key', p)) for p in path)
    flat[key] = tuple(getattr(leaf, 'shape', ()))
  return flat


def checkpoint_shapes(directory: str) -> Optional[Dict[str, Tuple[int, ...]]]:
  """The {'params/..': shape} of the newest step of the orbax folder `directory`, read from its
  metadata (no arrays); None when it holds no readable step."""
  if not os.path.isdir(directory):
    return None
  steps = sorted((int(s) for s in os.listdir(directory) if s.isdigit()), reverse=True)
  for step in steps:
    path = os.path.join(directory, str(step), 'state')
    try:
      metadata = ocp.StandardCheckpointer().metadata(path)
    except Exception:  # pylint: disable=broad-except  (an unreadable step: try the one before)
      continue
    tree = getattr(getattr(metadata, 'item_metadata', metadata), 'tree', None)
    if tree is None:
      continue
    return _flat_shapes({k: tree.get(k) or {} for k in ('params', 'batch_stats')})
  return None


def mismatch(expected: Dict[str, tuple], found: Dict[str, tuple]) -> Optional[str]:
  """What differs between the module's variables and a checkpoint's, in words; None if they fit."""
  problems = []
  for key in sorted(set(expected) | set(found)):
    if key not in found:
      problems.append(f'{key} {expected[key]} is missing from the checkpoint')
    elif key not in expected:
      problems.append(f'{key} {found[key]} is not in the module')
    elif expected[key] != found[key]:
      problems.append(f'{key} is {found[key]} in the checkpoint, {expected[key]} in the module')
  if not problems:
    return None
  more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
  return problems[0] + more


def check_checkpoint_fits(classifier: nn.Module, image_size: int, directory: str,
                          what: str) -> None:
  """A `UserError` when the newest step under `directory` holds variables of other names or
  shapes than the module's; nothing when they fit or there is no step to compare with."""
  found = checkpoint_shapes(directory)
  if found is None:
    return
  problem = mismatch(variable_shapes(classifier, image_size), found)
  if problem:
    raise errors.UserError(f'{what}: the variables do not fit the classifier module: {problem}.')


# `classifier.name` of a workdir whose classifier was given as a function (`wysiwyc.api`): no
# module to build; `wysiwyc.explain.load` needs the function again.
FUNCTION_CLASSIFIER = 'function'


class FunctionClassifier:
  """A classifier given as `apply_fn(variables, images) -> logits`, with the one method the stages
  call on a classifier module: `apply(variables, images, train=False)`."""

  def __init__(self, apply_fn):
    self.apply_fn = apply_fn

  def apply(self, variables, images, train: bool = False):
    del train  # frozen: always applied as at inference
    return self.apply_fn(variables, images)
