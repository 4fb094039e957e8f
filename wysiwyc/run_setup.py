"""What a run checks before it writes into its workdir, and the description of the run it
leaves there (config.json, spec.json), which resuming and `wysiwyc.explain` read.
"""

import json
import os

import jax
import ml_collections

from wysiwyc import checkpointing
from wysiwyc import errors
from wysiwyc import model_setup
from wysiwyc import models
from wysiwyc.data import pipeline
from wysiwyc.data import sources
from wysiwyc.models import shipped


# Config fields that change the shape or meaning of checkpoints: a workdir made with other values
# cannot be resumed.
_FROZEN_FIELDS = ('mode', 'data', 'classifier.name', 'classifier.kwargs', 'explainer.name',
                  'explainer.kwargs', 'loss.kind')


def _lookup(config_dict: dict, dotted: str):
  for key in dotted.split('.'):
    config_dict = config_dict.get(key, {}) if isinstance(config_dict, dict) else {}
  return config_dict


def check_inputs_available(config: ml_collections.ConfigDict) -> None:
  """Stops, before anything is written, when the data or pretrained weights of `config` are
  neither on this machine nor downloadable, with one message naming all of them."""
  problems = list(pipeline.missing_data(config.data))
  # The number of classes does not matter for a weights file; 1 avoids preparing the data.
  builders = [lambda: models.build_explainer(config.explainer.name, 1, **config.explainer.kwargs)]
  if not config.classifier.get('checkpoint', ''):
    builders.append(lambda: models.classifiers.build(config.classifier.name, 1,
                                                     **config.classifier.kwargs))
  for build in builders:
    try:
      module = build()
    except (ValueError, TypeError):  # Not buildable yet (e.g. registered by its stage): the
      continue                       # stage that builds it reports any problem.
    problem = models.missing_pretrained(module)
    if problem:
      problems.append(problem)
  init_from = config.explainer.get('init_from', '')
  if shipped.is_zoo_reference(init_from):
    entries = shipped.available()
    if shipped.entry_name(init_from) not in entries:
      problems.append(f'explainer.init_from={init_from!r}: no such zoo entry (shipped: '
                      f"{', '.join(entries) or 'none'}); fix the name or leave it empty.")
  elif (init_from and init_from != model_setup.CLASSIFIER_START
        and not os.path.isdir(init_from)):
    problems.append(f'explainer.init_from={init_from!r}: no such folder (a wysiwyc workdir, an '
                    "orbax checkpoint folder, 'zoo:NAME' or 'classifier'); fix the path or leave "
                    'it empty.')
  if problems:
    raise errors.UserError(sources.format_missing(problems))


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints were made for another model or data set."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  current = json.loads(config.to_json_best_effort())
  changed = [field for field in _FROZEN_FIELDS
             if _lookup(previous, field) != _lookup(current, field)]
  if changed:
    raise errors.UserError(f'{workdir} was made with a different {", ".join(changed)}; its '
                     'checkpoints do not fit this config. Use a new --workdir (or restore the '
                     'previous values).')


def write_workdir_description(config, spec, workdir: str) -> None:
  if jax.process_index() != 0:
    return
  checkpointing.write_text_atomic(os.path.join(workdir, 'config.json'),
                                  config.to_json_best_effort(indent=2, sort_keys=True))
  checkpointing.write_json_atomic(os.path.join(workdir, 'spec.json'), spec_to_json(spec))


def spec_to_json(spec) -> dict:
  return {'name': spec.name, 'class_names': list(spec.class_names),
          'image_size': spec.image_size, 'multilabel': spec.multilabel,
          'num_examples': dict(spec.num_examples)}
