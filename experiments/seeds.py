r"""The main job at several seeds: each seed's metrics, their mean and spread.

  python experiments/seeds.py --config=configs/synthetic.py --workdir=workdirs/seeds --seeds=0,1,2

Runs `python -m wysiwyc.main` once per seed (`config.seed`: the explainer's initialization
where it starts from random weights, the order of the training data, the augmentation), each in
`<workdir>/seed=N` (reused when finished), and writes `seeds.md` and `seeds.json` in
the workdir: one row per seed (the Explainer's metrics on the test split, the classifier's
per-class accuracy, wall time), then the mean, the standard deviation and
the minimum over the seeds. A target holds on any machine when it holds at the minimum with a
margin: XLA's CPU code differs by processor, and one seed's figures move with it.
"""

import copy
import json
import os
import time
from typing import Dict, List

from absl import app
from absl import flags
import ml_collections
import numpy as np
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import checkpointing
from wysiwyc import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Experiment config.',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Folder for one workdir per seed and the tables.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Values of config.seed.')
flags.mark_flag_as_required('workdir')

STATISTICS = ('mean', 'std', 'min')
EXPLAINER_COLUMNS = ('iou@0.5', 'per_class_iou@0.5', 'mean_f1', 'cont_iou', 'auc', 'saliency',
                     'object_coverage', 'background_coverage', 'specificity_other_over_own')


def run_seed(config: ml_collections.ConfigDict, seed: int, workdir: str) -> Dict[str, object]:
  """The main job with `config.seed = seed` in `<workdir>/seed=N` (reused when finished): its
  row of the table."""
  config = copy.deepcopy(config)
  config.seed = seed
  directory = os.path.join(workdir, f'seed={seed}')
  timing_path = os.path.join(directory, 'wall_seconds.json')
  start = time.time()
  results = train.train_and_evaluate(config, directory)
  if not os.path.exists(timing_path):  # a reused run keeps the time it took
    checkpointing.write_json_atomic(timing_path, {'seconds': time.time() - start})
  with open(timing_path) as f:
    seconds = json.load(f)['seconds']
  return {'variant': f'seed={seed}', **{k: results['explainer'][k] for k in EXPLAINER_COLUMNS},
          'classifier_accuracy': results['classifier']['accuracy_plain'],
          'wall_seconds': round(seconds, 1)}


def summarize(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
  """Rows 'mean', 'std' (population) and 'min' over the numeric columns of `rows`."""
  columns = [k for k in rows[0] if k != 'variant']
  values = {k: np.array([float(row[k]) for row in rows]) for k in columns}
  reducers = {'mean': np.mean, 'std': np.std, 'min': np.min}
  return [{'variant': name, **{k: float(reducers[name](v)) for k, v in values.items()}}
          for name in STATISTICS]


def markdown(rows: List[Dict[str, object]]) -> str:
  columns = list(rows[0])
  lines = ['| ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * (len(columns) - 1)]
  for row in rows:
    cells = [str(row['variant'])] + [f'{row[c]:.3f}' if isinstance(row[c], float)
                                     else str(row[c]) for c in columns[1:]]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  workdir = os.path.abspath(FLAGS.workdir)
  rows = []
  for seed in FLAGS.seeds:
    rows.append(run_seed(FLAGS.config, int(seed), workdir))
  table = rows + summarize(rows)
  checkpointing.write_text_atomic(os.path.join(workdir, 'seeds.md'), markdown(table))
  checkpointing.write_json_atomic(os.path.join(workdir, 'seeds.json'), {'rows': table})
  print(markdown(table))


if __name__ == '__main__':
  app.run(main)
