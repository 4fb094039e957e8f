r"""Loss and training ablations of the Explainer against one trained classifier.

  python experiments/ablate.py --config=configs/synthetic.py --workdir=workdirs/ablate \
      --steps=600

Trains the config's classifier once (or uses `--config.classifier.checkpoint`), then one
explainer per variant with the same seed and a fixed step budget (no early stopping, so every
variant gets the same number of updates), and writes `ablation.md` and `ablation.csv` in the
workdir: variant x metric, plus wall time. Finished variants are reused when re-run.

Variants are plain config overrides. The default list switches each loss term off, scales each
weight by 0.1 and 10, moves the area bounds, and changes the learning rate and explainer width
(from random weights when the config starts from `explainer.init_from`, which then also gets a
variant `init_from=random`).
Run your own with repeated `--variant=NAME:FIELD=VALUE[,FIELD=VALUE...]`, e.g.
  --variant=no_tv:loss.lambda_tv=0 --variant=wide:explainer.kwargs.width=32
and pick defaults by name with `--only=baseline,no_entropy`.
"""

import ast
import copy
import csv
import json
import os
import re
import time
from typing import Dict, List, Tuple

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Base experiment config.',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Folder for the classifier, the variants and the tables.')
flags.DEFINE_integer('steps', 600, 'Explainer steps per variant.')
flags.DEFINE_integer('eval_examples', 0, 'Test images scored per variant (0 = all).')
flags.DEFINE_multi_string('variant', [], 'NAME:FIELD=VALUE[,FIELD=VALUE...] (repeatable).')
flags.DEFINE_list('only', [], 'Run only these default variants (and those given with --variant).')
flags.mark_flag_as_required('workdir')

COLUMNS = ('iou@0.5', 'per_class_iou@0.5', 'mean_f1', 'cont_iou', 'auc', 'saliency',
           'object_coverage', 'background_coverage', 'specificity_other_over_own')
LOSS_TERMS = ('lambda_c', 'lambda_e', 'lambda_tv', 'lambda_ac', 'lambda_t', 'lambda_nt')


def default_variants(config: ml_collections.ConfigDict) -> Dict[str, Dict[str, object]]:
  """name -> {dotted field: value}: each term off, each weight x0.1 and x10, area bounds,
  learning rate, width and (if the config has one) the starting weights."""
  variants: Dict[str, Dict[str, object]] = {'baseline': {}}
  for term in LOSS_TERMS:
    weight = config.loss[term]
    variants[f'{term}=0'] = {f'loss.{term}': 0.0}
    variants[f'{term}x0.1'] = {f'loss.{term}': weight * 0.1}
    variants[f'{term}x10'] = {f'loss.{term}': weight * 10}
  variants['min_area=0'] = {'loss.min_area': 0.0}
  variants['max_area=1'] = {'loss.max_area': 1.0}
  variants['area=[0.1,0.5]'] = {'loss.min_area': 0.1, 'loss.max_area': 0.5}
  lr = config.explainer.train.learning_rate
  variants['lr x0.1'] = {'explainer.train.learning_rate': lr * 0.1}
  variants['lr x3'] = {'explainer.train.learning_rate': lr * 3}
  width = config.explainer.kwargs.width
  # Starting weights (explainer.init_from) fit one width only: other widths start at random.
  random_start = {'explainer.init_from': ''} if config.explainer.get('init_from', '') else {}
  variants['width x0.5'] = {'explainer.kwargs.width': max(width // 2, 1), **random_start}
  variants['width x2'] = {'explainer.kwargs.width': width * 2, **random_start}
  if random_start:
    variants['init_from=random'] = random_start
  return variants


def parse_variant(text: str) -> Tuple[str, Dict[str, object]]:
  """'name:a.b=1,c=x' -> ('name', {'a.b': 1, 'c': 'x'}); values parsed as Python literals."""
  if ':' not in text:
    raise app.UsageError(f'--variant={text!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE...]')
  name, assignments = text.split(':', 1)
  overrides = {}
  for assignment in filter(None, assignments.split(',')):
    field, _, value = assignment.partition('=')
    try:
      overrides[field.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = value.strip()
  return name, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: Dict[str, object]):
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    *parents, leaf = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise app.UsageError(f'Unknown config field {field!r}.')
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value
  return config


def variant_config(base: ml_collections.ConfigDict, overrides, classifier_dir: str, steps: int,
                   eval_examples: int) -> ml_collections.ConfigDict:
  config = apply_overrides(base, overrides)
  config.classifier.checkpoint = classifier_dir
  train_steps.set_step_budget(config.explainer.train, steps)
  config.explainer.train.num_epochs = 10_000  # the step budget decides
  config.explainer.train.patience = 10_000
  config.eval.max_examples = eval_examples
  return config


def train_classifier(config, directory: str) -> None:
  """Stage 1 of a normal run into `directory` (reused when finished)."""
  import jax  # pylint: disable=g-import-not-at-top
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  spec = pipeline.prepare(config.data)
  run_setup.write_workdir_description(config, spec, directory)
  stages.classifier_stage(config, spec, directory, data_parallel.create_mesh(),
                          jax.random.fold_in(jax.random.key(config.seed), 1))


def variant_folder(name: str) -> str:
  """A folder name for variant `name`: characters other than letters, digits and `.=,+-` become
  `_` (orbax cannot read checkpoints back under a path with glob characters such as `[`)."""
  return re.sub(r'[^A-Za-z0-9.=,+-]', '_', name)


def run_variant(name: str, config, workdir: str) -> dict:
  """Trains and evaluates one variant (reused if its results exist); returns its row."""
  directory = os.path.join(workdir, 'variants', variant_folder(name))
  timing_path = os.path.join(directory, 'wall_seconds.json')
  start = time.time()
  results = train.train_and_evaluate(config, directory)
  if not os.path.exists(timing_path):
    checkpointing.write_json_atomic(timing_path, {'seconds': time.time() - start})
  with open(timing_path) as f:
    seconds = json.load(f)['seconds']
  row = {'variant': name, **{k: results['explainer'][k] for k in COLUMNS},
         'accuracy_kept': results['classifier']['accuracy_kept'],
         'accuracy_dropped': results['classifier']['accuracy_dropped'],
         'wall_seconds': round(seconds, 1)}
  logging.info('%s: %s', name, row)
  return row


def write_tables(rows: List[dict], workdir: str) -> None:
  columns = list(rows[0])
  with open(os.path.join(workdir, 'ablation.csv.tmp'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(os.path.join(workdir, 'ablation.csv.tmp'), os.path.join(workdir, 'ablation.csv'))
  lines = ['| ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * (len(columns) - 1)]
  for row in rows:
    cells = [row['variant']] + [f'{row[c]:.3f}' if isinstance(row[c], float) else str(row[c])
                                for c in columns[1:]]
    lines.append('| ' + ' | '.join(cells) + ' |')
  checkpointing.write_text_atomic(os.path.join(workdir, 'ablation.md'), '\n'.join(lines) + '\n')


def main(argv):
  del argv
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  base, workdir = FLAGS.config, os.path.abspath(FLAGS.workdir)
  variants = default_variants(base)
  custom = dict(parse_variant(v) for v in FLAGS.variant)
  variants.update(custom)
  if FLAGS.only:
    unknown = set(FLAGS.only) - set(variants)
    if unknown:
      raise app.UsageError(f'Unknown variants {sorted(unknown)}; known: {sorted(variants)}')
    # --only picks among the defaults; variants given with --variant always run.
    variants = {k: v for k, v in variants.items() if k in FLAGS.only or k in custom}
  classifier_dir = base.classifier.checkpoint or os.path.join(workdir, 'classifier_run')
  if not base.classifier.checkpoint:
    train_classifier(base, classifier_dir)
  rows = []
  for name, overrides in variants.items():
    config = variant_config(base, overrides, classifier_dir, FLAGS.steps, FLAGS.eval_examples)
    rows.append(run_variant(name, config, workdir))
    write_tables(rows, workdir)
  print(open(os.path.join(workdir, 'ablation.md')).read())


if __name__ == '__main__':
  app.run(main)
