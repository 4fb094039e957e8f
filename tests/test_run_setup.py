"""A workdir holds what it says it holds (wysiwyc.run_setup): a re-run whose config changes a
setting of a trained stage stops before writing anything; one that changes only the evaluation
re-runs only the evaluation; `--retrain` trains a stage and those after it again."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, smoke_config
from wysiwyc import console
from wysiwyc import errors
from wysiwyc import run_setup
from wysiwyc import train


def one_epoch_config(data_dir):
  config = smoke_config(data_dir)
  config.classifier.train.num_epochs = 1
  config.explainer.train.num_epochs = 1
  config.eval.num_figure_images = 1
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, data_dir):
  """A finished smoke run of one epoch per stage."""
  directory = str(tmp_path_factory.mktemp('finished'))
  with contextlib.redirect_stderr(io.StringIO()):
    train.train_and_evaluate(one_epoch_config(data_dir), directory)
  return directory


def file_hashes(directory, under=('',)):
  hashes = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, directory)
      if any(relative.startswith(prefix) for prefix in under):
        with open(path, 'rb') as f:
          hashes[relative] = hashlib.sha256(f.read()).hexdigest()
  return hashes


def test_stage_fields_and_changed_settings():
  previous = {'seed': 0, 'log_every_steps': 2, 'eval': {'batch_size': 8},
              'data': {'name': 'x', 'data_dir': '/a', 'synthetic': {'num_test': 16, 'seed': 0}},
              'classifier': {'kwargs': {}, 'train': {'checkpoint_every_steps': 0, 'lr': 1.0}},
              'explainer': {'distill': {'lr': 1.0}}, 'loss': {'lambda_tv': 1.0},
              'compute_dtype': 'float32'}
  flat = run_setup._flatten(previous)  # pylint: disable=protected-access
  assert run_setup.stage_fields('classifier', flat) == [
      'seed', 'data.name', 'data.synthetic.seed', 'classifier.kwargs', 'classifier.train.lr',
      'compute_dtype']
  assert run_setup.stage_fields('explainer', flat) == [
      'seed', 'data.name', 'data.synthetic.seed', 'classifier.kwargs', 'classifier.train.lr',
      'explainer.distill.lr', 'loss.lambda_tv', 'compute_dtype']
  current = json.loads(json.dumps(previous))
  current.update(log_every_steps=5, eval={'batch_size': 4}, loss={'lambda_tv': 0.0})
  current['data'].update(data_dir='/b', synthetic={'num_test': 8, 'seed': 0})
  current['classifier']['kwargs'] = {'width': 4}
  current['explainer']['distill']['new_field'] = 3
  assert run_setup.changed_settings(previous, current, 'classifier') == [
      ('classifier.kwargs', {}, run_setup.ABSENT), ('classifier.kwargs.width', run_setup.ABSENT, 4)]
  assert [f for f, _, _ in run_setup.changed_settings(previous, current, 'explainer')] == [
      'classifier.kwargs', 'classifier.kwargs.width', 'explainer.distill.new_field',
      'loss.lambda_tv']
  assert run_setup.changed_settings({'mode': 'self_explainer'}, {}, 'classifier') == [
      ('mode', 'self_explainer', run_setup.ABSENT)]
  with pytest.raises(errors.UserError, match='choose one of classifier, explainer'):
    run_setup.retrained_stages('explaner')
  assert run_setup.retrained_stages('classifier') == ('classifier', 'explainer')


def test_workdirs_trained_before_the_fill_fields_resume_with_the_zero_fill_only():
  config = smoke_config('/unused')
  current = json.loads(config.to_json_best_effort())
  previous = json.loads(config.to_json_best_effort())
  del previous['loss']['fill'], previous['loss']['fill_blur_sigma']
  assert current['loss']['fill'] == 'zeros'
  assert run_setup.changed_settings(previous, current, 'explainer') == []
  current['loss']['fill'] = 'auto'  # not what such a workdir was trained with
  assert run_setup.changed_settings(previous, current, 'explainer') == [
      ('loss.fill', run_setup.ABSENT, 'auto')]


def test_results_json_says_where_its_numbers_come_from(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    described = json.load(f)['provenance']
  assert {'versions', 'device_kind', 'device_count', 'stage_seconds'} <= set(described)
  assert set(described['stage_seconds']) == {'classifier', 'explainer'}
  assert all(seconds > 0 for seconds in described['stage_seconds'].values())


def test_changed_training_fields_stop_the_cli_before_it_writes_anything(workdir, data_dir):
  before = file_hashes(workdir)
  tv = one_epoch_config(data_dir).loss.lambda_tv
  result = subprocess.run(
      [sys.executable, '-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
       '--config.classifier.train.num_epochs=1', '--config.explainer.train.num_epochs=1',
       '--config.eval.num_figure_images=1', '--config.loss.lambda_tv=0',
       '--config.explainer.train.max_steps=16'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  output = result.stdout + result.stderr
  assert output.count('error: ') == 1 and 'Traceback' not in output, output
  assert f'  loss.lambda_tv: {float(tv)} -> 0.0' in output, output
  assert '  explainer.train.max_steps: ' in output and '-> 16' in output, output
  assert '--retrain=explainer' in output and 'new --workdir' in output, output
  assert file_hashes(workdir) == before


def test_a_changed_classifier_field_names_the_classifier_as_the_stage_to_retrain(
    workdir, data_dir):
  before = file_hashes(workdir)
  config = one_epoch_config(data_dir)
  config.classifier.train.learning_rate *= 2
  with pytest.raises(errors.UserError, match=r'(?s)classifier and explainer trained with other.*'
                     r'classifier\.train\.learning_rate.*--retrain=classifier'):
    train.train_and_evaluate(config, workdir)
  with pytest.raises(errors.UserError, match='classifier.train.learning_rate'):
    train.train_and_evaluate(config, workdir, retrain='explainer')  # the classifier changed too
  assert file_hashes(workdir) == before


def test_a_changed_evaluation_field_reruns_only_the_evaluation(workdir, data_dir):
  stages = file_hashes(workdir, under=('classifier', 'explainer'))
  config = one_epoch_config(data_dir)
  config.eval.max_examples = 8
  config.log_every_steps = 1
  output = io.StringIO()
  with contextlib.redirect_stderr(output):
    results = train.train_and_evaluate(config, workdir)
  for stage in ('classifier', 'explainer'):
    assert console.reused_stage_line(stage) in output.getvalue()
  assert 'starts from' not in output.getvalue()
  assert file_hashes(workdir, under=('classifier', 'explainer')) == stages
  assert results['classifier']['num_test_images'] == 8
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['eval']['max_examples'] == 8


def test_retrain_trains_the_named_stage_again_and_records_its_settings(workdir, data_dir,
                                                                       tmp_path):
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  classifier = file_hashes(copy, under=('classifier',))
  config = one_epoch_config(data_dir)
  config.explainer.train.patience += 1  # a setting that the compiled steps do not depend on
  output = io.StringIO()
  with contextlib.redirect_stderr(output):
    train.train_and_evaluate(config, copy, retrain='explainer')
  assert console.reused_stage_line('classifier') in output.getvalue()
  assert 'explainer: starts from' in output.getvalue()
  assert file_hashes(copy, under=('classifier',)) == classifier
  with open(os.path.join(copy, 'config.json')) as f:
    assert json.load(f)['explainer']['train']['patience'] == config.explainer.train.patience
  run_setup.check_workdir_config(config, copy)  # the workdir now holds these settings
