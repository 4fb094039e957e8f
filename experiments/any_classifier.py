r"""The Explainer of classifiers of several families, from random Explainer weights.

  python experiments/any_classifier.py --workdir=workdirs/any_classifier \
      --families=simple_cnn,resnet,mixer --starts=blackbox,random --seeds=0,1,2

For each classifier family (`configs/synthetic.py`'s variants of the same name; `simple_cnn` is
the default's SimpleCNN): the classifier is the shipped one for `simple_cnn`
(`zoo:synthetic_shapes_cnn`, or `zoo:synthetic_natural_cnn` with `--data=natural`, made by the
`scratch` recipe) and is trained once with the `scratch` recipe for the other families, in
`<workdir>/<family>/classifier` (reused when finished). Then the main job runs against it for each
start and seed, in `<workdir>/<family>/<start>/seed=N` (reused when finished):

- `random`: random Explainer weights and the paper's loss (`explainer.init_from=''`);
- `blackbox`: the black-box start (`configs/synthetic.py:blackbox`: a student distilled from the
  classifier's predictions gives the encoder; the single-class term beside the paper's loss);
- `classifier_start`: the SimpleCNN's own convolutions as the encoder (`simple_cnn` only).

Writes `any_classifier.md` and `any_classifier.json` into the workdir (rewritten after every
run): one row per run (the Explainer's test metrics, the classifier's per-class accuracy, the
training seconds of the distillation and of the Explainer from their epoch records, the main
job's wall time), then per family and start the mean and the worst seed (lowest iou and
mean_f1, highest other/own). The classifier's training time is in `classifiers`.
"""

import copy
import json
import os
import time

from absl import app
from absl import flags
import jax

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import checkpointing
from wysiwyc import config_check
from wysiwyc import data_parallel
from wysiwyc import loop
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for the classifiers, the runs and the table.')
flags.DEFINE_list('families', ['simple_cnn', 'resnet', 'mixer'], 'Classifier families.')
flags.DEFINE_list('starts', ['blackbox', 'random'], 'Explainer starts (see the docstring).')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Values of config.seed of the Explainer runs.')
flags.DEFINE_enum('data', 'default', ['default', 'natural'], 'The synthetic data variant.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: the config\'s).')
flags.DEFINE_bool('report_only', False, 'Write the tables from the runs that finished (their '
                  'results.json) without running anything.')
flags.DEFINE_list('classifiers', [], 'FAMILY=DIR: a classifier of that family already trained '
                  'by the scratch recipe (a workdir or an experiments/train_zoo_classifier.py '
                  'workdir), used instead of training one.')
flags.mark_flag_as_required('workdir')

SHIPPED = {'default': 'zoo:synthetic_shapes_cnn', 'natural': 'zoo:synthetic_natural_cnn'}
START_VARIANTS = {'random': '', 'blackbox': 'blackbox', 'classifier_start': 'classifier_start'}
COLUMNS = ('classifier_accuracy', 'iou@0.5', 'per_class_iou@0.5', 'mean_f1',
           'specificity_other_over_own', 'distill_seconds', 'explainer_seconds', 'wall_seconds')
HIGHER_IS_WORSE = ('specificity_other_over_own', 'distill_seconds', 'explainer_seconds',
                   'wall_seconds')
SECONDS = ('distill_seconds', 'explainer_seconds', 'wall_seconds')


def synthetic_config(*variants: str):
  """`configs/synthetic.py:<variants>`, loaded by path as config files are."""
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  config = config_check.config_module('synthetic', configs).get_config(
      ','.join(v for v in variants if v))
  if FLAGS.data_dir:
    config.data.data_dir = FLAGS.data_dir
  return config


def data_variant() -> str:
  return 'natural' if FLAGS.data == 'natural' else ''


def family_variant(family: str) -> str:
  return '' if family == 'simple_cnn' else family


def train_classifier(family: str, directory: str) -> dict:
  """The family's classifier by the `scratch` recipe, in `directory` (reused when finished):
  {'checkpoint', 'accuracy' (test, per class), 'seconds'}."""
  summary_path = os.path.join(directory, 'classifier_summary.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  config = synthetic_config('scratch', data_variant(), family_variant(family))
  start = time.time()
  mesh = data_parallel.create_mesh()
  spec = train.prepare_data(config.data)
  run_setup.write_workdir_description(config, spec, directory)
  classifier, variables = stages.classifier_stage(
      config, spec, directory, mesh, jax.random.fold_in(jax.random.key(config.seed), 1))
  eval_step = train_steps.jit_eval_step(
      train_steps.make_classifier_eval_step(classifier, spec.multilabel), mesh)
  batches = pipeline.as_numpy(pipeline.make_dataset(config.data, 'test', config.eval.batch_size,
                                                    training=False, seed=config.seed))
  accuracy = float(loop.evaluate(eval_step, variables, batches, mesh)['accuracy'])
  summary = {'checkpoint': directory, 'accuracy': accuracy,
             'seconds': round(time.time() - start, 1)}
  checkpointing.write_json_atomic(summary_path, summary)
  return summary


def explainer_run(family: str, start: str, seed: int, classifier: str, directory: str) -> dict:
  """The main job against `classifier` from `start` at `seed` in `directory` (reused): its row."""
  config = synthetic_config(data_variant(), family_variant(family), START_VARIANTS[start])
  config.classifier.checkpoint = classifier
  if start == 'random':  # the paper's loss from random weights
    config.explainer.init_from = ''
    config.loss.lambda_single = 0.0
    config.loss.fill = 'zeros'
  config.seed = seed
  timing_path = os.path.join(directory, 'wall_seconds.json')
  started = time.time()
  if FLAGS.report_only:
    with open(os.path.join(directory, 'results.json')) as f:
      results = json.load(f)
  else:
    results = train.train_and_evaluate(copy.deepcopy(config), directory)
  if not FLAGS.report_only and not os.path.exists(timing_path):  # a reused run keeps its time
    checkpointing.write_json_atomic(timing_path, {'seconds': time.time() - started})
  seconds = float('nan')
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      seconds = json.load(f)['seconds']
  explainer = results['explainer']
  stage_seconds = results.get('provenance', {}).get('stage_seconds', {})
  return {'family': family, 'start': start, 'seed': str(seed),
          'classifier_accuracy': results['classifier']['accuracy_plain'],
          **{k: explainer[k] for k in COLUMNS[1:5]},
          'distill_seconds': stage_seconds.get('distill', 0.0),
          'explainer_seconds': stage_seconds.get('explainer', 0.0),
          'wall_seconds': round(seconds, 1)}


def summary_rows(rows: list) -> list:
  """Per (family, start): the mean over seeds and the worst seed's value of each column."""
  summaries = []
  for key in dict.fromkeys((row['family'], row['start']) for row in rows):
    group = [row for row in rows if (row['family'], row['start']) == key]
    mean = {c: sum(float(row[c]) for row in group) / len(group) for c in COLUMNS}
    worst = {c: (max if c in HIGHER_IS_WORSE else min)(float(row[c]) for row in group)
             for c in COLUMNS}
    summaries.append({'family': key[0], 'start': key[1], 'seed': f'mean of {len(group)}', **mean})
    summaries.append({'family': key[0], 'start': key[1], 'seed': 'worst', **worst})
  return summaries


def markdown(rows: list) -> str:
  header = ('family', 'start', 'seed') + COLUMNS
  lines = ['| ' + ' | '.join(header) + ' |', '|---|---|---|' + '---:|' * len(COLUMNS)]
  for row in rows:
    cells = [row['family'], row['start'], row['seed']]
    cells += [f'{float(row[c]):.0f}' if c in SECONDS else f'{float(row[c]):.3f}'
              for c in COLUMNS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_tables(workdir: str, rows: list, classifiers: dict) -> None:
  table = rows + summary_rows(rows)
  checkpointing.write_text_atomic(os.path.join(workdir, 'any_classifier.md'), markdown(table))
  checkpointing.write_json_atomic(os.path.join(workdir, 'any_classifier.json'),
                                  {'rows': table, 'classifiers': classifiers})


def main(argv):
  del argv
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  workdir = os.path.abspath(FLAGS.workdir)
  rows, classifiers = [], {}
  for family in FLAGS.families:
    given = dict(item.split('=', 1) for item in FLAGS.classifiers)
    if family == 'simple_cnn':
      classifiers[family] = {'checkpoint': SHIPPED[FLAGS.data]}
    elif family in given:
      classifiers[family] = {'checkpoint': os.path.abspath(given[family])}
    elif FLAGS.report_only:
      classifiers[family] = {'checkpoint': os.path.join(workdir, family, 'classifier')}
    else:
      classifiers[family] = train_classifier(family, os.path.join(workdir, family, 'classifier'))
    for start in FLAGS.starts:
      if start == 'classifier_start' and family != 'simple_cnn':
        continue  # it copies SimpleCNN convolutions
      for seed in FLAGS.seeds:
        directory = os.path.join(workdir, family, start, f'seed={seed}')
        if FLAGS.report_only and not os.path.exists(os.path.join(directory, 'results.json')):
          continue
        rows.append(explainer_run(family, start, int(seed), classifiers[family]['checkpoint'],
                                  directory))
        write_tables(workdir, rows, classifiers)
  print(markdown(rows + summary_rows(rows)))


if __name__ == '__main__':
  app.run(main)
