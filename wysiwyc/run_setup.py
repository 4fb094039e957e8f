"""What a run checks before it writes into its workdir, and the description of the run it
leaves there (config.json, spec.json), which resuming and `wysiwyc.explain` read.
"""

import json
import os
import shutil

import jax
import ml_collections

from wysiwyc import checkpointing
from wysiwyc import classifier_check
from wysiwyc import errors
from wysiwyc import model_setup
from wysiwyc import models
from wysiwyc import onnx_classifier
from wysiwyc.data import pipeline
from wysiwyc.data import sources
from wysiwyc.models import shipped


# The trained stages of a workdir, in training order; each depends on those before it.
STAGES = ('classifier', 'explainer')
# The folders of each stage in a workdir (the black-box start's distillation belongs to the
# Explainer's stage).
_STAGE_FOLDERS = {'classifier': ('classifier',), 'explainer': ('explainer', 'distill')}
# The config fields of the classifier's stage (with their subfields); the Explainer's stage
# depends on every field but those of _NOT_TRAINING.
_CLASSIFIER_FIELDS = ('seed', 'mode', 'compute_dtype', 'data', 'classifier')
# Fields that no trained stage depends on: what is evaluated and shown, how often the console and
# checkpoints report, where data and weights are stored, how processes meet. A re-run may change
# them; only the evaluation and the figures follow.
_NOT_TRAINING = ('eval', 'log_every_steps', 'smoke', 'distributed', 'weights_dir',
                 'data.data_dir', 'data.manual_dir', 'data.synthetic.num_test',
                 'data.coco.num_eval_images', 'data.coco.eval_seed')
_NOT_TRAINING_LEAVES = ('checkpoint_every_steps',)


# What `changed_settings` gives for a field that only one of the two configs has.
ABSENT = '(absent)'
# Fields added to the configs after workdirs were trained without them: absent from a workdir's
# config.json and at this default in the new config, they are no change.
ADDED_FIELDS = {**{f'classifier.{k}': v for k, v in onnx_classifier.config_fields().items()},
                # the paper's zero fill, which the loss used before the field existed
                'loss.fill': 'zeros', 'loss.fill_blur_sigma': 0.125}


def _lookup(config_dict: dict, dotted: str):
  for key in dotted.split('.'):
    config_dict = config_dict.get(key, {}) if isinstance(config_dict, dict) else {}
  return config_dict


def _flatten(tree: dict, prefix: str = '') -> dict:
  """{'a.b': leaf}; an empty dict is a leaf of its own."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _under(field: str, prefixes) -> bool:
  return any(field == p or field.startswith(p + '.') for p in prefixes)


def stage_fields(stage: str, flat_config: dict) -> list:
  """The fields of `flat_config` that the trained `stage` depends on."""
  training = [f for f in flat_config if not _under(f, _NOT_TRAINING)
              and f.rsplit('.', 1)[-1] not in _NOT_TRAINING_LEAVES]
  if stage == 'classifier':
    return [f for f in training if _under(f, _CLASSIFIER_FIELDS)]
  return training


def changed_settings(previous: dict, current: dict, stage: str) -> list:
  """(field, old, new) for each field of `stage` that differs between two configs (as JSON
  dicts); a field that only one of them has differs too (shown as '(absent)')."""
  old, new = _flatten(previous), _flatten(current)
  fields = sorted(set(stage_fields(stage, old)) | set(stage_fields(stage, new)))
  return [(f, old.get(f, ABSENT), new.get(f, ABSENT)) for f in fields
          if old.get(f, ABSENT) != new.get(f, ABSENT)
          and not (f not in old and f in ADDED_FIELDS and new[f] == ADDED_FIELDS[f])]


def present_stages(workdir: str) -> list:
  """The stages that have a folder in `workdir` (finished or not)."""
  return [stage for stage in STAGES if any(
      os.path.isdir(os.path.join(workdir, folder)) and os.listdir(os.path.join(workdir, folder))
      for folder in _STAGE_FOLDERS[stage])]


def retrained_stages(retrain: str) -> tuple:
  """The stages that `--retrain=STAGE` trains again: STAGE and those that depend on it."""
  if not retrain:
    return ()
  if retrain not in STAGES:
    raise errors.UserError(f'--retrain={retrain!r}; choose one of {", ".join(STAGES)}.')
  return STAGES[STAGES.index(retrain):]


def check_inputs_available(config: ml_collections.ConfigDict) -> None:
  """Stops, before anything is written, when the data or pretrained weights of `config` are
  neither on this machine nor downloadable, with one message naming all of them; first, an
  ONNX classifier's file that cannot be read or holds an operator that cannot be run."""
  if onnx_classifier.path_of(config):  # the file and its operators; its classes come later
    onnx_classifier.from_config(config, multilabel=True)
  problems = list(pipeline.missing_data(config.data))
  # The number of classes does not matter for a weights file; 1 avoids preparing the data.
  builders = [lambda: models.build_explainer(config.explainer.name, 1, **config.explainer.kwargs)]
  if not onnx_classifier.path_of(config) and not config.classifier.get('checkpoint', ''):
    builders.append(lambda: classifier_check.build(config.classifier.name, 1,
                                                   **config.classifier.kwargs))
  for build in builders:
    try:
      module = build()
    except errors.UserError:  # a module that cannot be imported, a factory that cannot be called
      raise
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
  elif (init_from and init_from not in model_setup.NAMED_STARTS
        and not os.path.isdir(init_from)):
    problems.append(f'explainer.init_from={init_from!r}: no such folder (a wysiwyc workdir, an '
                    "orbax checkpoint folder, 'zoo:NAME', 'classifier', 'distill' or 'auto'); fix "
                    'the path or leave it empty.')
  if problems:
    raise errors.UserError(sources.format_missing(problems))


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str,
                         retrain: str = '') -> None:
  """Refuses, before anything is written, to reuse or resume a stage of `workdir` that was
  trained with other settings than `config`'s (its config.json, which a run writes only when it
  changes no trained stage), unless `retrain` names that stage or one it depends on.

  One message lists every changed field, old -> new, and the ways on: a new --workdir, or
  `--retrain=STAGE`, which trains that stage and those after it again in this workdir.
  """
  path = os.path.join(workdir, 'config.json')
  retrained = retrained_stages(retrain)
  if onnx_classifier.path_of(config):
    onnx_classifier.check_unchanged(workdir, onnx_classifier.path_of(config), retrained)
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  current = json.loads(config.to_json_best_effort())
  changes = {stage: changed_settings(previous, current, stage)
             for stage in present_stages(workdir) if stage not in retrained}
  changes = {stage: changed for stage, changed in changes.items() if changed}
  if not changes:
    return
  first = next(stage for stage in STAGES if stage in changes)
  shown = []
  for stage in STAGES:
    for field, old, new in changes.get(stage, ()):
      if field not in {f for f, _, _ in shown}:
        shown.append((field, old, new))
  stages = ' and '.join(STAGES[STAGES.index(first):])
  show = lambda value: value if value == ABSENT else json.dumps(value)
  lines = '\n'.join(f'  {field}: {show(old)} -> {show(new)}' for field, old, new in shown)
  raise errors.UserError(
      f'{workdir} holds the {" and ".join(changes)} trained with other settings than this '
      f'config\'s:\n{lines}\nNothing was written. Use a new --workdir for these settings, or '
      f'--retrain={first} to train the {stages} again in this workdir (replacing '
      f'{"their" if " and " in stages else "its"} checkpoints, the results and the figures), or '
      'the previous values.')


def clear_retrained_stages(workdir: str, retrain: str) -> None:
  """Deletes what `--retrain` trains again: the stages' folders and TensorBoard logs, the
  results and the figures (process 0; the other processes wait for it)."""
  stages = retrained_stages(retrain)
  if not stages:
    return
  folders = [folder for stage in stages for folder in _STAGE_FOLDERS[stage]]
  folders += [os.path.join('tensorboard', name) for name in folders + ['self_explainer']]
  for name in folders + ['figures', 'results.json', 'results.md']:
    path = os.path.join(workdir, name)
    if jax.process_index() == 0 and os.path.isdir(path):
      shutil.rmtree(path)
    elif jax.process_index() == 0 and os.path.exists(path):
      os.remove(path)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('wysiwyc: retrained stages cleared by process 0')


def check_classifier(config: ml_collections.ConfigDict, spec) -> None:
  """Stops before the workdir is written when the classifier of an Explainer run cannot be used:
  its module does not import, its factory cannot be called as `factory(num_classes, **kwargs)`,
  it does not run on the config's images, or `classifier.checkpoint` is missing or holds
  variables of other names or shapes (`wysiwyc.classifier_check`); an ONNX file
  (`classifier.onnx`) that does not take the images or give one logit a class."""
  if config.get('mode', 'explainer') != 'explainer':
    return
  if onnx_classifier.path_of(config):  # an ONNX file: it must take the images, give the classes
    onnx_classifier.check(onnx_classifier.from_config(config, spec.multilabel),
                          config.data.image_size, len(spec.class_names),
                          onnx_classifier.path_of(config))
    return
  try:
    classifier = classifier_check.build(config.classifier.name, len(spec.class_names),
                                        **config.classifier.kwargs,
                                        **model_setup.compute_dtype_kwargs(config))
  except errors.UserError:
    raise
  except ValueError as error:  # an unknown registered name
    raise errors.UserError(f'classifier.name: {error}') from None
  classifier_check.variable_shapes(classifier, config.data.image_size)
  source = config.classifier.get('checkpoint', '')
  if not source or shipped.is_zoo_reference(source):
    return
  if not os.path.isdir(source):
    raise errors.UserError(f'classifier.checkpoint={source!r}: no such folder (a wysiwyc workdir '
                           'or an orbax checkpoint folder); fix the path or leave it empty.')
  for directory in (os.path.join(source, 'classifier', 'best'), source):
    if classifier_check.checkpoint_shapes(directory) is not None:
      classifier_check.check_checkpoint_fits(classifier, config.data.image_size, directory,
                                             f'classifier.checkpoint={source!r}')
      return


def check_split_sizes(config: ml_collections.ConfigDict, spec) -> None:
  """Stops before the workdir is written when the train split is smaller than one batch of a
  stage that trains on it, naming the flag to change."""
  train = spec.num_examples.get('train', 0)
  fields = ['explainer.train.batch_size']
  if (config.get('mode', 'explainer') == 'explainer' and not config.classifier.get('checkpoint', '')
      and not onnx_classifier.path_of(config)):
    fields.insert(0, 'classifier.train.batch_size')
  problems = []
  for field in fields:
    batch_size = _lookup(config.to_dict(), field)
    if train < batch_size:
      problems.append(f'the train split has {train} images, fewer than one batch of {batch_size} '
                      f'(--config.{field}={batch_size}); set it to {train} or less, or add '
                      'training images.')
  if problems:
    raise errors.UserError(' '.join(problems) if len(problems) == 1 else
                           '\n'.join(['Too few training images:'] + [f'  {p}' for p in problems]))


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
