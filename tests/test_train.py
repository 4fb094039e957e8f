"""End-to-end tests of the training stages on the smoke config (tiny synthetic data)."""

import contextlib
import io
import json
import os
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

from tests.conftest import REPO, smoke_config
from wysiwyc import console
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import evaluation
from wysiwyc import loop
from wysiwyc import metrics
from wysiwyc import model_setup
from wysiwyc import models
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import synthetic
from wysiwyc.models import shipped

METHODS = ('explainer',) + evaluation.REFERENCE_METHODS
REQUIRED_METRICS = ('mean_f1', 'cont_f1', 'accuracy', 'iou@0.5', 'cont_iou', 'auc', 'saliency',
                    'object_coverage', 'background_coverage', 'per_class_iou@0.5')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def run_capturing_console(config, workdir: str) -> tuple:
  """(results, what the run printed on stderr: its lines and progress bars)."""
  output = io.StringIO()
  with contextlib.redirect_stderr(output):
    results = train.train_and_evaluate(config, workdir)
  return results, output.getvalue()


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('smoke'))
  results, output = run_capturing_console(smoke_config(data_dir), workdir)
  return workdir, results, output


@pytest.fixture(scope='module')
def finished(finished_run):
  workdir, results, _ = finished_run
  return workdir, results


def test_main_job_writes_every_artifact(finished):
  workdir, results = finished
  for name in ('config.json', 'spec.json', 'results.json', 'results.md', 'figures/masks.png',
               'figures/training.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  for stage in ('classifier', 'explainer'):
    assert os.listdir(os.path.join(workdir, stage, 'best'))
    assert os.listdir(os.path.join(workdir, stage, 'checkpoints'))
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  markdown = open(os.path.join(workdir, 'results.md')).read()
  for method in METHODS:
    assert f'| {method} |' in markdown


def test_console_says_what_each_stage_uses_its_steps_why_it_ended_and_where_results_are(
    finished_run):
  """The smoke stages: 64 training images in batches of 16 for 2 epochs; the explainer's
  max_steps (750) is above that, so the epochs end both stages."""
  workdir, _, output = finished_run
  for stage in ('classifier', 'explainer'):
    assert f'{stage}: starts from random weights, up to 8 steps (2 epochs of 4)' in output
    assert f'{stage} 8/8 steps' in output  # the progress bar counts optimizer steps
    assert f'{stage}: all 2 epochs done at step 8; best validation loss' in output
  assert 'epoch 1/2:' not in output  # no bar per epoch
  assert output.rstrip().endswith(console.results_line(workdir))
  markdown = open(os.path.join(workdir, 'results.md')).read()
  assert markdown.startswith(evaluation.SMOKE_NOTE)


def test_stage_end_reasons_and_lines():
  tc = ml_collections.ConfigDict({'patience': 2, 'max_steps': 750})
  assert loop.end_reason({'bad_epochs': 2}, 300, tc) == 'early_stopping'
  assert loop.end_reason({'bad_epochs': 1}, 750, tc) == 'budget'
  tc.max_steps = 0
  assert loop.end_reason({'bad_epochs': 0}, 750, tc) == 'epochs'
  assert console.stage_end_line('explainer', 'budget', 750, 5, 4, 0.1234) == (
      'explainer: step budget reached at step 750 (epoch 5); best validation loss 0.1234 '
      '(epoch 4) kept')
  assert 'early stopping at step 300 (epoch 3): no improvement of the validation loss for 2 ' \
         'epochs' in console.stage_end_line('explainer', 'early_stopping', 300, 3, 1, 0.5, 2)
  with pytest.raises(ValueError, match='Unknown reason'):
    console.stage_end_line('explainer', 'tired', 1, 1, 1, None)
  assert console.step_budget(750, 50, 187, 5) == (
      '750 steps, early stopping after 5 epochs without improvement')
  assert console.step_budget(0, 10, 469, 10) == 'up to 4690 steps (10 epochs of 469)'
  # An epoch that the budget ends before any logged step has no train loss to show.
  assert console.epoch_line('explainer', 5, 750, {}, {'loss': 0.0854, 'iou@0.5': 0.7759},
                            False) == ('explainer epoch 5 (step 750): validation loss 0.0854, '
                                       'iou@0.5 0.7759')
  assert console.epoch_line('explainer', 4, 748, {'loss': 0.0942}, {'loss': 0.0856}, True) == (
      'explainer epoch 4 (step 748): train loss 0.0942 | validation loss 0.0856 (best so far)')


def test_shipped_classifier_line_gives_its_test_accuracy():
  accuracy = shipped.read_metadata('synthetic_shapes_cnn')['per_class_accuracy']['test']
  assert stages.loaded_classifier_line('zoo:synthetic_shapes_cnn') == (
      f'classifier: shipped zoo:synthetic_shapes_cnn (test accuracy {accuracy:.3f}), not trained')
  assert stages.loaded_classifier_line('some/dir').startswith('classifier: loaded from /')


def test_results_hold_every_metric_and_references_score_as_they_must(finished):
  _, results = finished
  for method in METHODS:
    missing = set(REQUIRED_METRICS) - set(results[method])
    assert not missing, (method, missing)
    assert set(metrics.metric_names(with_saliency=True)) <= set(results[method])
  truth, empty, full = results['ground_truth'], results['all_0'], results['all_1']
  for key in ('iou@0.5', 'cont_iou', 'per_class_iou@0.5', 'mean_f1', 'object_coverage', 'auc'):
    assert truth[key] == pytest.approx(1.0), key
  assert truth['background_coverage'] == pytest.approx(0.0)
  for key in ('iou@0.5', 'cont_iou', 'per_class_iou@0.5', 'object_coverage'):
    assert empty[key] == pytest.approx(0.0), key
  assert full['object_coverage'] == pytest.approx(1.0)
  assert full['background_coverage'] == pytest.approx(1.0)
  assert 0 < full['iou@0.5'] < 1
  for key in ('accuracy_plain', 'accuracy_kept', 'accuracy_dropped'):
    assert 0 <= results['classifier'][key] <= 1
  assert results['classifier']['num_test_images'] == 16
  for key in ('specificity_own', 'specificity_other'):
    assert 0 <= results['explainer'][key] <= 1, key


def test_rerun_reuses_finished_stages(finished, data_dir):
  workdir, results = finished
  steps_before = {s: sorted(os.listdir(os.path.join(workdir, s, 'checkpoints')))
                  for s in ('classifier', 'explainer')}
  again, output = run_capturing_console(smoke_config(data_dir), workdir)
  for stage in ('classifier', 'explainer'):
    assert console.reused_stage_line(stage) in output
  steps_after = {s: sorted(os.listdir(os.path.join(workdir, s, 'checkpoints')))
                 for s in ('classifier', 'explainer')}
  assert steps_after == steps_before
  assert again == results


def test_preempted_run_resumes_to_the_same_result(finished, data_dir, tmp_path, monkeypatch):
  """A SIGTERM mid-training saves and stops; re-running continues to the uninterrupted result.

  The smoke classifier trains 2 epochs of 4 steps: the flag is raised at the 3rd step check
  (classifier, mid-epoch) and at the 11th (explainer step 3) of the runs together.
  """
  _, uninterrupted = finished
  workdir = str(tmp_path / 'preempted')
  checks = {'n': 0}

  class PreemptAtSomeSteps(loop._SigtermFlag):  # pylint: disable=protected-access
    @property
    def raised(self):
      checks['n'] += 1
      return checks['n'] in (3, 11)

    @raised.setter
    def raised(self, value):
      pass

  monkeypatch.setattr(loop, '_SigtermFlag', PreemptAtSomeSteps)
  for stage in ('classifier', 'explainer'):
    with pytest.raises(loop.Preempted, match=stage):
      train.train_and_evaluate(smoke_config(data_dir), workdir)
    assert not os.path.exists(os.path.join(workdir, 'results.json'))
  monkeypatch.undo()
  resumed = train.train_and_evaluate(smoke_config(data_dir), workdir)
  for method in METHODS:
    for key, value in uninterrupted[method].items():
      np.testing.assert_allclose(resumed[method][key], value, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{method} {key}')


def test_workdir_of_another_model_is_refused(finished, data_dir):
  workdir, _ = finished
  config = smoke_config(data_dir)
  config.explainer.kwargs.width = 4
  with pytest.raises(errors.UserError, match='explainer.kwargs'):
    train.train_and_evaluate(config, workdir)


def fresh_explainer_state(config):
  explainer = models.build_explainer(config.explainer.name, config.data.synthetic.num_classes,
                                     **config.explainer.kwargs)
  tx = train_steps.make_optimizer(config.explainer.train)
  return train_steps.init_state(explainer, tx, jax.random.key(7), config.data.image_size)


def initial_explainer(init_from, config, state):
  config.explainer.init_from = init_from
  num_classes = config.data.synthetic.num_classes
  spec = types.SimpleNamespace(class_names=synthetic.SHAPE_NAMES[:num_classes])
  return model_setup.with_initial_explainer(config, spec, state, data_parallel.create_mesh())


def test_explainer_init_from_starts_from_another_runs_explainer(finished, data_dir):
  workdir, _ = finished
  config = smoke_config(data_dir)
  fresh = fresh_explainer_state(config)
  started = jax.device_get(initial_explainer(workdir, config, fresh))
  trained = model_setup.restore_stage_variables(
      workdir, 'explainer', jax.device_get({'params': fresh.params,
                                            'batch_stats': fresh.batch_stats}))
  for got, want in zip(jax.tree.leaves(started.params), jax.tree.leaves(trained['params'])):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(started.params),
                                                      jax.tree.leaves(fresh.params)))
  assert int(started.step) == 0  # only the weights are taken, not the training progress
  assert initial_explainer('', config, fresh) is fresh


def smoke_classifier_variables(config, **kwargs):
  classifier = models.classifiers.build(config.classifier.name,
                                        config.data.synthetic.num_classes,
                                        **{**config.classifier.kwargs, **kwargs})
  images = np.zeros((1, config.data.image_size, config.data.image_size, 3), np.float32)
  return jax.device_get(dict(classifier.init(jax.random.key(3), images)))


def test_explainer_init_from_classifier_takes_the_encoder_from_the_classifier(data_dir):
  config = smoke_config(data_dir)
  fresh = jax.device_get(fresh_explainer_state(config))
  classifier_variables = smoke_classifier_variables(config)
  started = jax.device_get(model_setup.with_initial_explainer(
      ml_collections.ConfigDict({**config.to_dict(), 'explainer': {
          **config.explainer.to_dict(), 'init_from': 'classifier'}}),
      None, fresh, data_parallel.create_mesh(), classifier_variables))
  num_blocks = len([k for k in classifier_variables['params'] if k.startswith('blocks_')])
  assert num_blocks == config.classifier.kwargs.depth
  for level in range(num_blocks):
    for collection in ('params', 'batch_stats'):
      got = getattr(started, collection)[f'ConvBlock_{level}']
      want = classifier_variables[collection][f'blocks_{level}']
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
  untouched = [k for k in fresh.params if k not in {f'ConvBlock_{i}' for i in range(num_blocks)}]
  assert untouched  # the bottleneck and the decoder keep their fresh weights
  for name in untouched:
    for a, b in zip(jax.tree.leaves(started.params[name]), jax.tree.leaves(fresh.params[name])):
      np.testing.assert_array_equal(a, b)
  assert 'classifier' in model_setup.start_description(
      ml_collections.ConfigDict({'init_from': 'classifier', 'kwargs': {}}))


def test_explainer_init_from_classifier_refuses_a_classifier_that_does_not_fit(data_dir):
  config = smoke_config(data_dir)
  config.explainer.init_from = 'classifier'
  fresh = jax.device_get(fresh_explainer_state(config))
  mesh = data_parallel.create_mesh()
  wider = smoke_classifier_variables(config, width=2 * config.classifier.kwargs.width)
  with pytest.raises(errors.UserError, match="init_from='classifier'.*does not fit.*width"):
    model_setup.with_initial_explainer(config, None, fresh, mesh, wider)
  with pytest.raises(errors.UserError, match="init_from='classifier' needs a classifier"):
    model_setup.with_initial_explainer(config, None, fresh, mesh, None)
  run_setup.check_inputs_available(config)  # 'classifier' is not taken for a missing folder


def test_explainer_init_from_of_another_model_or_a_missing_folder_is_refused(
    finished, data_dir, tmp_path):
  workdir, _ = finished
  config = smoke_config(data_dir)
  config.explainer.kwargs.width = 4
  with pytest.raises(errors.UserError, match='explainer.init_from'):
    initial_explainer(workdir, config, fresh_explainer_state(config))
  config.explainer.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(errors.UserError, match='init_from.*no such folder'):
    run_setup.check_inputs_available(config)
  assert not os.path.exists(tmp_path / 'nowhere')
  config.explainer.init_from = 'zoo:nothing_by_that_name'
  with pytest.raises(errors.UserError, match='init_from.*no such zoo entry'):
    run_setup.check_inputs_available(config)


def test_cli_reports_config_errors_without_traceback(tmp_path, data_dir):
  result = subprocess.run(
      [sys.executable, '-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke',
       f'--workdir={tmp_path / "w"}', f'--config.data.data_dir={data_dir}',
       '--config.classifier.train.batch_size=1000'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'fewer than one batch' in result.stderr
  assert 'Traceback' not in result.stderr


def test_train_steps_are_deterministic(data_dir):
  """Same config and seed: identical parameters after a few explainer steps."""
  import jax
  from wysiwyc.data import pipeline
  config = smoke_config(data_dir)
  spec = pipeline.prepare(config.data)
  mesh = data_parallel.create_mesh()
  batch = next(pipeline.as_numpy(pipeline.make_dataset(config.data, 'train', 8, training=True,
                                                       seed=0)))
  outcomes = []
  for _ in range(2):
    classifier = model_setup.build_classifier(config, spec)
    explainer = model_setup.build_explainer(config, spec)
    rng = jax.random.key(0)
    c_state = train_steps.init_state(classifier,
                                     train_steps.make_optimizer(config.classifier.train), rng, 32)
    tx = train_steps.make_optimizer(config.explainer.train)
    state = train_steps.init_state(explainer, tx, rng, 32)
    step = train_steps.jit_train_step(train_steps.make_explainer_train_step(
        explainer, classifier, tx, train_steps.explainer_loss_fn(config, True)), mesh, 1)
    for _ in range(3):
      state, aux = step(state, c_state.variables(), data_parallel.shard_batch(batch, mesh), rng)
    outcomes.append(jax.device_get((state.params, aux)))
  jax.tree.map(np.testing.assert_array_equal, outcomes[0], outcomes[1])


def test_cosine_schedule_with_decay_steps_0_decays_over_the_stage():
  config = ml_collections.ConfigDict({'learning_rate': 1e-3, 'batch_size': 10, 'num_epochs': 3,
                                      'max_steps': 0, 'schedule': 'cosine', 'warmup_steps': 5,
                                      'decay_steps': 0})
  resolved = train_steps.with_schedule_length(config, num_train_examples=105)
  assert resolved.decay_steps == 3 * 10 and resolved.warmup_steps == 5
  assert config.decay_steps == 0  # the config itself is left as it was
  schedule = train_steps.learning_rate_schedule(resolved)
  assert float(schedule(5)) == pytest.approx(1e-3)
  assert float(schedule(30)) == pytest.approx(1e-5)
  config.max_steps = 4  # a step budget wins; a warm-up as long shrinks to a tenth of it
  assert train_steps.with_schedule_length(config, 105).decay_steps == 4
  assert train_steps.with_schedule_length(config, 105).warmup_steps == 0
  config.decay_steps = 7  # given: kept
  assert train_steps.with_schedule_length(config, 105) is config
  with pytest.raises(errors.UserError, match='or to 0'):
    train_steps.learning_rate_schedule(ml_collections.ConfigDict({**config.to_dict(),
                                                                  'decay_steps': 0}))
