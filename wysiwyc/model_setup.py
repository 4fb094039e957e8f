"""The stages' models, built from the config, and the weights they start from: pretrained
backbones, a shipped zoo entry, or a checkpoint of another workdir.
"""

import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import models
from wysiwyc import train_steps
from wysiwyc.models import shipped


def compute_dtype_kwargs(config) -> dict:
  """`{'dtype': bfloat16}` for `config.compute_dtype='bfloat16'` (parameters stay float32),
  nothing for float32, so models that take no `dtype` keep working."""
  name = config.get('compute_dtype', 'float32')
  if name == 'float32':
    return {}
  if name == 'bfloat16':
    return {'dtype': jnp.bfloat16}
  raise errors.UserError(f"compute_dtype={name!r}; choose 'float32' or 'bfloat16'.")


def build_classifier(config, spec) -> nn.Module:
  return models.classifiers.build(config.classifier.name, len(spec.class_names),
                                  **config.classifier.kwargs, **compute_dtype_kwargs(config))


def build_explainer(config, spec) -> nn.Module:
  return models.build_explainer(config.explainer.name, len(spec.class_names),
                                **config.explainer.kwargs, **compute_dtype_kwargs(config))


def with_pretrained_weights(model: nn.Module, state: train_steps.TrainState,
                            mesh: Mesh) -> train_steps.TrainState:
  """A fresh state with the model's pretrained weights put in (zoo backbones; others as is)."""
  variables = models.load_pretrained(model, {'params': state.params,
                                             'batch_stats': state.batch_stats})
  return data_parallel.replicate(state.replace(params=variables['params'],
                                               batch_stats=variables['batch_stats']), mesh)


def load_classifier_checkpoint(source: str, state: train_steps.TrainState, config, spec) -> dict:
  """Reads classifier variables from a shipped zoo entry ('zoo:NAME'), a workdir (its
  `classifier/best`) or an orbax folder."""
  target = {'params': state.params, 'batch_stats': state.batch_stats}
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_compatible(shipped.read_metadata(name), config, spec.class_names)
    return shipped.load(name, jax.device_get(target))
  restored = restore_stage_variables(source, 'classifier', target)
  if restored is not None:
    return restored
  raise errors.UserError(
      f'classifier.checkpoint={source!r} holds no readable classifier checkpoint. Give a '
      'wysiwyc workdir whose classifier stage finished, or an orbax checkpoint folder whose '
      "steps hold {'params', 'batch_stats'} for config.classifier.")


def restore_stage_variables(source: str, stage: str, target: dict) -> Optional[dict]:
  """The {'params', 'batch_stats'} of a workdir's `<stage>/best`, or of an orbax folder, read
  into the structure of `target`; None when neither holds a readable checkpoint of it."""
  for directory in (os.path.join(source, stage, 'best'), source):
    if os.path.isdir(directory):
      restored = checkpointing.restore_latest(checkpointing.manager(directory, 1), target)
      if restored is not None:
        return restored[0]
  return None


def with_initial_explainer(config, spec, state: train_steps.TrainState,
                           mesh: Mesh) -> train_steps.TrainState:
  """`state` started from the explainer variables named by `config.explainer.init_from`: a
  shipped zoo entry ('zoo:NAME'), a workdir (its `explainer/best`) or an orbax folder;
  unchanged when it is ''."""
  source = config.explainer.get('init_from', '')
  if not source:
    return state
  target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_explainer_compatible(shipped.read_metadata(name), config, spec.class_names)
    return data_parallel.replicate(state.replace(**shipped.load(name, target)), mesh)
  restored = restore_stage_variables(source, 'explainer', target)
  if restored is None:
    raise errors.UserError(
        f'explainer.init_from={source!r} holds no explainer checkpoint that fits this config. '
        'Give a wysiwyc workdir (or an orbax folder) made with the same explainer.name and '
        'explainer.kwargs, or leave explainer.init_from empty to start from random weights.')
  return data_parallel.replicate(state.replace(**restored), mesh)
