"""Shared test helpers: loading configs by path, tiny workdirs."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A persistent compilation cache shared by the test processes (and the CLIs they start): the
# same steps are compiled by several tests.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(REPO, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import pytest


def load_config(name: str, arg: str = ''):
  """`configs/<name>.py:get_config(arg)`, as `--config=configs/<name>.py:<arg>` would."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def smoke_config(data_dir: str):
  config = load_config('synthetic', 'smoke')
  config.data.data_dir = str(data_dir)
  return config


def fabricate_workdir(workdir: str, config, class_names, seed: int = 0) -> None:
  """A workdir with untrained (random) classifier and explainer checkpoints, as training leaves."""
  from wysiwyc import checkpointing
  from wysiwyc import models
  size = config.data.image_size
  spec = {'name': 'fabricated', 'class_names': list(class_names), 'image_size': size,
          'multilabel': True, 'num_examples': {}}
  os.makedirs(workdir, exist_ok=True)
  checkpointing.write_text_atomic(os.path.join(workdir, 'config.json'),
                                  config.to_json_best_effort())
  checkpointing.write_json_atomic(os.path.join(workdir, 'spec.json'), spec)
  modules = {
      'classifier': models.classifiers.build(config.classifier.name, len(class_names),
                                             **config.classifier.kwargs),
      'explainer': models.build_explainer(config.explainer.name, len(class_names),
                                          **config.explainer.kwargs)}
  for i, (stage, module) in enumerate(modules.items()):
    variables = module.init(jax.random.key(seed + i), jnp.zeros((1, size, size, 3)), train=False)
    checkpointing.save(checkpointing.manager(os.path.join(workdir, stage, 'best'), 1), 0,
                       {'params': variables['params'],
                        'batch_stats': variables.get('batch_stats', {})}, {})
