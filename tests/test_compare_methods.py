"""Smoke test of the comparison harness (wysiwyc.compare, the library of
experiments/compare_methods.py) on fabricated (untrained) workdirs, 3 images."""

import csv
import json
import math
import os

from absl import flags
import pytest

from tests.conftest import fabricate_workdir, smoke_config
from wysiwyc.data import pipeline

from wysiwyc import compare as compare_methods  # pylint: disable=g-bad-import-order

# A subset keeps the test short; every method's output is tested in tests/test_attribution.py.
METHODS = ['explainer', 'real_time_saliency', 'self_explainer', 'grad_cam', 'rise',
           'extremal_perturbation', 'lime']
TINY = dict(num_images=3, batch_size=2, timing_batch_size=2, rise_masks=8, ep_iterations=2,
            ep_areas=['0.1'], lime_samples=8, lime_segments=8, insertion_steps=2,
            sanity_images=2, figure_images=2)


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['compare_methods'])
  config = smoke_config(tmp_path_factory.mktemp('data'))
  spec = pipeline.prepare(config.data)
  root = tmp_path_factory.mktemp('compare')
  workdir, rts = str(root / 'w'), str(root / 'rts')
  fabricate_workdir(workdir, config, spec.class_names)
  fabricate_workdir(rts, config, spec.class_names)  # same seed: the same classifier
  out = str(root / 'out')
  # The plumbing of the self-explainer entry only needs a workdir with an explainer in it.
  results = compare_methods.compare(workdir, out, methods=METHODS, rts_workdir=rts,
                                    self_explainer_workdir=rts, **TINY)
  return out, results


def test_writes_table_csv_json_and_figure(compared):
  out, results = compared
  assert list(results) == METHODS
  for name in ('comparison.md', 'comparison.csv', 'comparison.json', 'figures/comparison.png'):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, 'comparison.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == METHODS
  assert set(compare_methods.TABLE_COLUMNS) <= set(rows[0])
  markdown = open(os.path.join(out, 'comparison.md')).read()
  for method in METHODS:
    assert f'| {method} |' in markdown
  assert "The paper's findings here" in markdown and 'Best iou@0.5' in markdown
  summary = open(os.path.join(out, 'comparison_summary.md')).read()
  # The workdir by its name: pages quote the summary, not the folders of the run that made it.
  assert summary.startswith('Workdir `w`, 3 test images') and '## Settings' not in summary
  assert "**The paper's findings here:**" in summary and f'| {METHODS[0]} |' in summary
  table = [line for line in summary.splitlines() if line.startswith('|')]
  assert len(table) == len(METHODS) + 2 and all(line in markdown for line in table)
  with open(os.path.join(out, 'comparison.json')) as f:
    saved = json.load(f)
  assert saved['settings']['num_images'] == 3


def test_metrics_are_in_range_and_sanity_is_skipped_for_amortized_methods(compared):
  _, results = compared
  for method, row in results.items():
    for key in ('iou@0.5', 'mean_f1', 'insertion', 'deletion', 'pointing', 'specificity_own'):
      assert 0.0 <= row[key] <= 1.0, (method, key)
    assert row['seconds_per_image'] > 0
    if method in compare_methods.AMORTIZED:
      assert row['sanity_rank_corr'] is None
    else:
      assert -1.0 <= row['sanity_rank_corr'] <= 1.0 or math.isnan(row['sanity_rank_corr'])
  # The same untrained explainer in both workdirs gives the same masks and scores.
  for key in ('iou@0.5', 'insertion', 'specificity_own'):
    assert results['explainer'][key] == pytest.approx(results['real_time_saliency'][key])
    assert results['self_explainer'][key] == pytest.approx(results['explainer'][key])


def test_self_explainer_needs_its_workdir(compared, tmp_path):
  del compared
  with pytest.raises(compare_methods.errors.UserError, match='self_explainer_workdir'):
    compare_methods.load_self_explainer(None, None)


def test_findings_state_whether_each_claim_holds():
  row = lambda **kw: {'iou@0.5': 0.1, 'mean_f1': 0.1, 'seconds_per_image': 1.0,
                      'specificity_other': 0.5, **kw}
  results = {'explainer': row(**{'iou@0.5': 0.5, 'seconds_per_image': 0.001,
                                  'specificity_other': 0.05}),
             'rise': row(seconds_per_image=0.05), 'grad_cam': row(),
             'real_time_saliency': row(specificity_other=0.6)}
  lines = '\n'.join(compare_methods.findings(results))
  assert 'Best iou@0.5: holds' in lines and 'Best mean_f1: does not hold' in lines
  assert 'faster than rise: does not hold (50x' in lines
  assert 'than for rise (at most half): holds' in lines
  assert 'than for real_time_saliency (at most half): holds' in lines


def test_rts_config_freezes_the_classifier_and_sets_the_budget(tmp_path):
  config = smoke_config(tmp_path)
  rts = compare_methods.rts_config(config, '/some/workdir', steps=10, num_train=64)
  assert rts.loss.kind == 'real_time_saliency'
  assert rts.classifier.checkpoint == '/some/workdir'
  assert rts.explainer.train.max_steps == 10
  assert rts.explainer.train.num_epochs * (64 // rts.explainer.train.batch_size) >= 10
  assert config.loss.kind == 'explainer'  # the original config is left alone


def test_rts_is_trained_like_the_explainer_by_default(tmp_path):
  config = smoke_config(tmp_path)
  config.explainer.train.update(max_steps=37, schedule='cosine', decay_steps=37, patience=3)
  rts = compare_methods.rts_config(config, '/some/workdir', steps=0, num_train=64)
  assert rts.loss.kind == 'real_time_saliency'
  assert rts.explainer.train.to_dict() == config.explainer.train.to_dict()
  assert rts.explainer.init_from == config.explainer.init_from
  assert rts.explainer.kwargs.to_dict() == config.explainer.kwargs.to_dict()


def test_the_script_is_a_thin_client_whose_flags_are_the_harness_options():
  import experiments.compare_methods as script  # pylint: disable=g-import-not-at-top
  assert script.OPTION_FLAGS == tuple(compare_methods.DEFAULT_OPTIONS)
  fresh = flags.FlagValues()
  compare_methods.define_option_flags(fresh)
  compare_methods.define_option_flags(fresh)  # a second client: no flag defined twice
  assert {name: fresh[name].default for name in script.OPTION_FLAGS} == (
      compare_methods.DEFAULT_OPTIONS)
  assert 'workdir' in fresh and 'out' in fresh
  with open(script.__file__) as f:
    source = f.read()
  assert len(source.splitlines()) < 250 and 'from experiments' not in source
