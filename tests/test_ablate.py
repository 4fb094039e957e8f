"""experiments/ablate.py on the smoke config: variants run against one classifier, tables written."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from wysiwyc import checkpointing


def test_ablation_tables(tmp_path):
  workdir = tmp_path / 'ablate'
  command = [sys.executable, 'experiments/ablate.py', '--config=configs/synthetic.py:smoke',
             f'--config.data.data_dir={tmp_path / "tfds"}', f'--workdir={workdir}', '--steps=3',
             '--eval_examples=8', '--only=baseline',
             '--variant=sweep[tv=0]:loss.lambda_tv=0,explainer.train.learning_rate=0.01']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'ablation.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['variant'] for r in rows] == ['baseline', 'sweep[tv=0]']
  for row in rows:
    assert 0 <= float(row['iou@0.5']) <= 1
    assert float(row['wall_seconds']) > 0
  # Every variant explains the same classifier, trained once.
  assert sorted(os.listdir(workdir / 'classifier_run' / 'classifier' / 'best'))
  # Each variant's best checkpoint reads back, also for a name with glob characters (orbax cannot
  # read steps saved under a path with '[').
  for folder in ('baseline', 'sweep_tv=0_'):
    assert checkpointing.read_meta(str(workdir / 'variants' / folder / 'explainer' / 'best'))
  # The overrides took effect: different losses give different masks.
  assert rows[0]['cont_iou'] != rows[1]['cont_iou'] or rows[0]['auc'] != rows[1]['auc']
  assert '| sweep[tv=0] |' in (workdir / 'ablation.md').read_text()


def test_bad_variant_is_refused(tmp_path):
  result = subprocess.run(
      [sys.executable, 'experiments/ablate.py', '--config=configs/synthetic.py:smoke',
       f'--workdir={tmp_path}', '--variant=oops:loss.no_such_field=1', '--only=oops'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "Unknown config field 'loss.no_such_field'" in result.stderr


def default_variants(init_from: str) -> dict:
  """ablate.default_variants of configs/synthetic.py with `explainer.init_from`, in a separate
  process (the experiment scripts define absl flags of the same names)."""
  script = ('import json, sys; sys.path.insert(0, "experiments"); import ablate; '
            'from tests.conftest import load_config; c = load_config("synthetic"); '
            f'c.explainer.init_from = {init_from!r}; '
            'print(json.dumps({"variants": ablate.default_variants(c), "loss": c.loss.to_dict(), '
            '"width": c.explainer.kwargs.width, "terms": ablate.LOSS_TERMS}))')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_default_variants_cover_every_term_and_the_starting_weights():
  listed = default_variants('zoo:some_start')
  variants, loss = listed['variants'], listed['loss']
  for term in listed['terms']:
    assert variants[f'{term}=0'] == {f'loss.{term}': 0.0}
    assert variants[f'{term}x10'] == {f'loss.{term}': loss[term] * 10}
  # Starting weights fit one width only; the random start is a variant of its own.
  assert variants['width x2'] == {'explainer.kwargs.width': 2 * listed['width'],
                                  'explainer.init_from': ''}
  assert variants['init_from=random'] == {'explainer.init_from': ''}
  variants = default_variants('')['variants']
  assert 'init_from=random' not in variants and 'explainer.init_from' not in variants['width x2']
