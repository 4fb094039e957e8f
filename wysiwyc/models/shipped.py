"""Weights shipped inside the package: the synthetic data set's model zoo.

An entry `<name>` is two files in `WEIGHTS_DIR`: `<name>.msgpack` (the Flax variables) and
`<name>.json` (what they are: model name and kwargs, the data set and its generation
parameters, class names, measured accuracy, the command that made them, a sha256 of the
weights). Two kinds:
- a classifier (metadata key 'classifier'), written by `experiments/train_zoo_classifier.py`,
  named by `classifier.checkpoint = 'zoo:<name>'`;
- an explainer start (metadata key 'explainer'), written by `experiments/train_zoo_explainer.py`,
  named by `explainer.init_from = 'zoo:<name>'`: weights the Explainer's training starts from,
  as the authors' explainer starts from an ImageNet-pretrained backbone.
"""

import datetime
import hashlib
import json
import os
import sys
from typing import Any, Dict, Sequence

from absl import logging
import flax
import jax

from wysiwyc import checkpointing
from wysiwyc import errors

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
PREFIX = 'zoo:'
# Generation parameters that only choose how many examples each split has: a classifier
# trained on one split size explains data made with another.
_SPLIT_SIZE_FIELDS = ('num_train', 'num_validation', 'num_test')


def is_zoo_reference(source: str) -> bool:
  return source.startswith(PREFIX)


def entry_name(reference: str) -> str:
  """'zoo:NAME' -> 'NAME'."""
  return reference[len(PREFIX):]


def available(weights_dir: str = WEIGHTS_DIR) -> tuple:
  """Names of the shipped entries."""
  if not os.path.isdir(weights_dir):
    return ()
  return tuple(sorted(name[:-len('.json')] for name in os.listdir(weights_dir)
                      if name.endswith('.json')
                      and os.path.exists(os.path.join(weights_dir, name[:-5] + '.msgpack'))))


def _paths(name: str, weights_dir: str) -> tuple:
  base = os.path.join(weights_dir, name)
  return base + '.json', base + '.msgpack'


def read_metadata(name: str, weights_dir: str = WEIGHTS_DIR) -> Dict[str, Any]:
  """The JSON description of entry `name`; a UserError names the entries there are."""
  meta_path, weights_path = _paths(name, weights_dir)
  if not (os.path.exists(meta_path) and os.path.exists(weights_path)):
    entries = ', '.join(available(weights_dir)) or 'none'
    raise errors.UserError(
        f'No zoo entry {name!r} in {weights_dir}. Shipped: {entries}. Make a classifier with '
        'experiments/train_zoo_classifier.py (or train from scratch with '
        "classifier.checkpoint=''), an explainer start with experiments/train_zoo_explainer.py "
        "(or start from random weights with explainer.init_from='').")
  with open(meta_path) as f:
    return json.load(f)


def dataset_identity(data_config) -> Dict[str, Any]:
  """What identifies the data a classifier was trained on: builder, config and version."""
  identity = {'name': data_config.name, 'image_size': int(data_config.image_size)}
  if data_config.name == 'synthetic':
    from wysiwyc.data import synthetic  # pylint: disable=g-import-not-at-top
    builder = synthetic.make_builder(data_config)
    identity.update(builder=builder.name, config=builder.builder_config.name,
                    version=str(builder.version),
                    generation=json.loads(builder.builder_config.description))
  return identity


def check_compatible(metadata: Dict[str, Any], config, class_names: Sequence[str]) -> None:
  """Raises a UserError if the entry cannot serve `config`; warns if its data differ."""
  if 'classifier' not in metadata:
    raise errors.UserError(
        f"Zoo entry {metadata['name']!r} is not a classifier (an explainer start goes in "
        'explainer.init_from); classifier.checkpoint takes an entry made by '
        'experiments/train_zoo_classifier.py.')
  wanted = {'classifier.name': config.classifier.name,
            'classifier.kwargs': config.classifier.kwargs.to_dict(),
            'class names': list(class_names),
            'data.image_size': int(config.data.image_size)}
  shipped = {'classifier.name': metadata['classifier']['name'],
             'classifier.kwargs': metadata['classifier']['kwargs'],
             'class names': metadata['class_names'],
             'data.image_size': int(metadata['dataset']['image_size'])}
  _refuse_mismatch(wanted, shipped, f"Zoo classifier {metadata['name']!r}",
                   "Set those fields as the zoo entry has them, or train a classifier with "
                   "classifier.checkpoint=''.")
  warn_if_other_data(metadata, config)


def _refuse_mismatch(wanted: Dict[str, Any], shipped: Dict[str, Any], entry: str,
                     fix: str) -> None:
  """Raises a UserError naming every field whose config value `wanted` differs from the entry's
  value `shipped`, and `fix`."""
  changed = [key for key in wanted if wanted[key] != shipped[key]]
  if changed:
    details = '; '.join(f'{key}: config {wanted[key]!r}, zoo {shipped[key]!r}' for key in changed)
    raise errors.UserError(f'{entry} does not fit this config ({details}). {fix}')


def warn_if_other_data(metadata: Dict[str, Any], config) -> None:
  """Logs a warning when the entry was trained on synthetic data made with other parameters
  than `config.data` (split sizes aside)."""
  current = dataset_identity(config.data).get('generation', {})
  trained_on = metadata['dataset'].get('generation', {})
  differing = sorted(key for key in set(current) | set(trained_on)
                     if key not in _SPLIT_SIZE_FIELDS and current.get(key) != trained_on.get(key))
  if differing:
    logging.warning('Zoo entry %r was trained on synthetic data with other %s; it is used on '
                    'data it was not trained for.', metadata['name'], ', '.join(differing))


def check_explainer_compatible(metadata: Dict[str, Any], config,
                               class_names: Sequence[str]) -> None:
  """Raises a UserError unless explainer entry `metadata` has the variables of `config`'s
  explainer (name, the kwargs that shape its variables, class names)."""
  if 'explainer' not in metadata:
    raise errors.UserError(
        f"Zoo entry {metadata['name']!r} is not an explainer start (a classifier entry goes in "
        'classifier.checkpoint); explainer.init_from takes an entry made by '
        'experiments/train_zoo_explainer.py.')
  # Scales, dtypes and the upsampling change no variable, so an entry serves any of them.
  shape_free = ('logit_scale', 'dtype', 'upsample', 'guide_radius', 'guide_eps')
  strip = lambda kwargs: {k: v for k, v in kwargs.items() if k not in shape_free}
  wanted = {'explainer.name': config.explainer.name,
            'explainer.kwargs': strip(config.explainer.kwargs.to_dict()),
            'class names': list(class_names)}
  shipped = {'explainer.name': metadata['explainer']['name'],
             'explainer.kwargs': strip(metadata['explainer']['kwargs']),
             'class names': metadata['class_names']}
  _refuse_mismatch(wanted, shipped, f"Zoo explainer start {metadata['name']!r}",
                   "Set those fields as the zoo entry has them, or start from random weights "
                   "with explainer.init_from=''.")
  warn_if_other_data(metadata, config)


def load(name: str, target: Dict[str, Any], weights_dir: str = WEIGHTS_DIR) -> Dict[str, Any]:
  """Entry `name`'s variables, restored into the structure of `target`."""
  metadata = read_metadata(name, weights_dir)
  _, weights_path = _paths(name, weights_dir)
  with open(weights_path, 'rb') as f:
    payload = f.read()
  if hashlib.sha256(payload).hexdigest() != metadata['sha256']:
    raise errors.UserError(f'{weights_path} does not match the sha256 in its .json: the file is '
                           "damaged. Reinstall the package or re-run the command in its .json "
                           "('command': experiments/train_zoo_classifier.py or "
                           'train_zoo_explainer.py).')
  state = flax.serialization.msgpack_restore(payload)
  try:
    return flax.serialization.from_state_dict(target, state)
  except (ValueError, KeyError) as e:
    raise errors.UserError(f'Zoo entry {name!r} does not fit the model built from the '
                           f'config: {e}') from e


def provenance(config, variables: Dict[str, Any], payload: bytes) -> Dict[str, Any]:
  """The metadata every entry carries: its data, seed, size, sha256, the command that made it
  (this process's argv), date and library versions."""
  return {
      'data': json.loads(config.data.to_json_best_effort()),
      'dataset': dataset_identity(config.data),
      'seed': config.seed,
      'num_params': int(sum(x.size for x in jax.tree.leaves(variables['params']))),
      'sha256': hashlib.sha256(payload).hexdigest(),
      'command': ' '.join(['python'] + sys.argv),
      'created': datetime.date.today().isoformat(),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__},
  }


def write_entry(output_dir: str, name: str, payload: bytes, metadata: Dict[str, Any]) -> None:
  """Writes `<name>.msgpack` and `<name>.json` atomically (the weights first)."""
  os.makedirs(output_dir, exist_ok=True)
  meta_path, weights_path = _paths(name, output_dir)
  checkpointing.write_bytes_atomic(weights_path, payload)
  checkpointing.write_json_atomic(meta_path, metadata)
