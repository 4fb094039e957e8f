"""Tests of the self-explainer mode: its train step, its workdir, loading it through explain.

The loss terms themselves are checked against NumPy in tests/test_losses.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.conftest import load_config
from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import explain
from wysiwyc import loop
from wysiwyc import losses
from wysiwyc import models
from wysiwyc import self_explainer
from wysiwyc import train
from wysiwyc import train_steps

NUM_CLASSES = 3
SIZE = 16
LOSS_TERMS = ('classification_teacher', 'classification_student', 'similarity', 'tv',
              'area_class', 'area_target', 'area_non_target', 'coherency', 'loss')


def tiny_config(data_dir='/nonexistent'):
  config = load_config('synthetic_self_explainer', 'smoke')
  config.data.data_dir = str(data_dir)
  config.explainer.kwargs.width = 4
  return config


def random_batch(seed=0, batch_size=4):
  rng = np.random.default_rng(seed)
  labels = (rng.random((batch_size, NUM_CLASSES)) < 0.5).astype(np.float32)
  labels[0] = 0.0  # an image with no target class
  labels[1] = 1.0  # an image with every class a target
  return {'image': rng.normal(size=(batch_size, SIZE, SIZE, 3)).astype(np.float32),
          'labels': labels,
          'foreground': (rng.random((batch_size, SIZE, SIZE)) < 0.3).astype(np.float32)}


def run_one_step(config, batch, micro_batches=1):
  mesh = data_parallel.create_mesh()
  model = models.build_explainer(config.explainer.name, NUM_CLASSES, **config.explainer.kwargs)
  tx = train_steps.make_optimizer(config.explainer.train)
  state = train_steps.init_state(model, tx, jax.random.key(0), SIZE)
  before = jax.device_get(state.params)
  loss_fn = self_explainer.self_explainer_loss_fn(config, multilabel=True)
  step = train_steps.jit_train_step(
      self_explainer.make_train_step(model, tx, loss_fn, micro_batches), mesh)
  state, aux = step(state, data_parallel.shard_batch(batch, mesh), jax.random.key(1))
  return model, before, jax.device_get(state), jax.device_get(aux), loss_fn


def initial_variables(model):
  """The variables `run_one_step` starts from (same helper, same key)."""
  state = train_steps.init_state(model, optax.identity(), jax.random.key(0), SIZE)
  return {'params': state.params, 'batch_stats': state.batch_stats}


def test_running_batch_statistics_are_updated_by_the_teacher_pass_alone():
  """They are what the model uses on plain images; the student sees masked ones."""
  config, batch = tiny_config(), random_batch()
  model, _, state, _, _ = run_one_step(config, batch)
  initial = initial_variables(model)
  _, teacher_only = train_steps.apply_model(model, initial['params'], initial['batch_stats'],
                                            jnp.asarray(batch['image']), train=True)
  leaves = jax.tree.leaves(state.batch_stats)
  assert leaves and max_change(initial['batch_stats'], state.batch_stats) > 1e-4
  for got, want in zip(leaves, jax.tree.leaves(teacher_only)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def max_change(before, after):
  return max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before,
                                          after)))


def test_train_step_loss_is_the_loss_of_the_initial_model_and_params_move():
  config, batch = tiny_config(), random_batch()
  assert config.explainer.kwargs.norm == 'batch'
  model, before, state, aux, loss_fn = run_one_step(config, batch)
  assert set(aux) == set(LOSS_TERMS)
  for name, value in aux.items():
    assert np.isfinite(value), name
  # The step's loss is self_explainer_loss of the U-Net before the update.
  initial_stats = initial_variables(model)['batch_stats']
  total, expected = jax.jit(lambda params, images, labels: loss_fn(
      lambda x: train_steps.apply_model(model, params, initial_stats, x, train=True)[0], images,
      labels))(before, batch['image'], batch['labels'])
  np.testing.assert_allclose(aux['loss'], total, rtol=1e-5)
  for name in LOSS_TERMS:
    np.testing.assert_allclose(aux[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
  assert max_change(before, state.params) > 1e-5


def test_gradient_accumulation_gives_the_same_step():
  """Two micro-batches of 4 give the loss and gradient of one batch of 8 (every term is a mean).

  The gradient is read from Adam's first moment, which after one step is 0.1 * gradient (the
  update itself is about lr * sign(gradient), too coarse to compare).
  """
  config, batch = tiny_config(), random_batch(batch_size=8)
  config.explainer.kwargs.norm = 'group'  # batch norm's statistics differ per micro-batch
  _, _, whole, whole_aux, _ = run_one_step(config, batch)
  _, _, halves, halves_aux, _ = run_one_step(config, batch, micro_batches=2)
  for name in LOSS_TERMS:
    np.testing.assert_allclose(halves_aux[name], whole_aux[name], rtol=1e-4, err_msg=name)
  first_moment = lambda state: jax.tree.leaves(state.opt_state[-1][0].mu)
  scale = max(float(np.abs(m).max()) for m in first_moment(whole))
  assert scale > 0
  for a, b in zip(first_moment(halves), first_moment(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


def test_every_weight_zero_switches_training_off():
  config = tiny_config()
  for field in self_explainer.LOSS_FIELDS:
    if field.startswith('lambda_'):
      config.loss[field] = 0.0
  _, before, state, aux, _ = run_one_step(config, random_batch())
  assert aux['loss'] == 0.0 and aux['classification_teacher'] > 0
  assert max_change(before, state.params) == 0.0


def test_bad_loss_configs_are_user_errors():
  config = tiny_config()
  config.loss.kind = 'explainer'
  with pytest.raises(errors.UserError, match="loss.kind='self_explainer'"):
    self_explainer.self_explainer_loss_fn(config, True)
  config = tiny_config()
  config.loss.lambda_e = 1.0
  with pytest.raises(errors.UserError, match='lambda_e'):
    self_explainer.self_explainer_loss_fn(config, True)


def test_head_logits_are_the_spatial_mean_of_the_segmenter_logits():
  head = models.classifiers.build('self_explainer_head', NUM_CLASSES, explainer='unet', width=4,
                                  depth=2)
  segmenter = models.build_explainer('unet', NUM_CLASSES, width=4, depth=2)
  images = jnp.asarray(random_batch()['image'])
  variables = segmenter.init(jax.random.key(0), images, train=False)
  segmentations = np.asarray(segmenter.apply(variables, images))
  logits = head.apply(self_explainer.head_variables(variables), images)
  assert logits.shape == (images.shape[0], NUM_CLASSES)
  np.testing.assert_allclose(logits, segmentations.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  # Same parameter structure as the head's own init.
  own = head.init(jax.random.key(0), images, train=False)
  assert (jax.tree.structure(own) ==
          jax.tree.structure(self_explainer.head_variables(variables)))


def test_classifier_fields_follow_the_explainer_and_mismatches_are_refused():
  config = load_config('synthetic_self_explainer')
  assert config.mode == 'self_explainer' and config.loss.kind == 'self_explainer'
  config.explainer.kwargs.width = 24
  assert config.classifier.kwargs.width == 24
  assert (config.copy_and_resolve_references().classifier.kwargs.to_dict()
          == self_explainer.head_kwargs(config.explainer))
  self_explainer.check_config(config)
  config.classifier.kwargs.depth = 2  # a shared reference: both sides change
  assert config.explainer.kwargs.depth == 2
  self_explainer.check_config(config)
  config.classifier.kwargs = ml_collections.ConfigDict(
      {**self_explainer.head_kwargs(config.explainer), 'width': 8})
  with pytest.raises(errors.UserError, match='classifier.kwargs'):
    self_explainer.check_config(config)
  config.classifier.kwargs = self_explainer.head_kwargs(config.explainer)
  self_explainer.check_config(config)
  config.classifier.name = 'simple_cnn'
  with pytest.raises(errors.UserError, match='self_explainer_head'):
    self_explainer.check_config(config)
  with pytest.raises(ValueError, match='rts'):
    load_config('synthetic_self_explainer', 'smoke,rts')


# ------------------------------------------------------------------------- end to end (smoke)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def finished(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('self_explainer'))
  config = load_config('synthetic_self_explainer', 'smoke')
  config.data.data_dir = data_dir
  return workdir, train.train_and_evaluate(config, workdir)


def test_smoke_run_writes_a_self_describing_workdir(finished):
  workdir, results = finished
  for name in ('config.json', 'spec.json', 'results.json', 'results.md', 'figures/masks.png',
               'figures/training.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, 'explainer', 'checkpoints'))
  for stage in ('classifier', 'explainer'):
    assert os.listdir(os.path.join(workdir, stage, 'best')), stage
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['mode'] == 'self_explainer'
  for key in ('iou@0.5', 'cont_iou', 'mean_f1', 'saliency'):
    assert np.isfinite(results['explainer'][key]), key
  assert results['ground_truth']['iou@0.5'] == pytest.approx(1.0)
  assert 0 <= results['classifier']['accuracy_plain'] <= 1
  assert results['classifier']['num_test_images'] == 16
  history = loop.stage_history(os.path.join(workdir, 'explainer'))
  assert len(history) == 2 and {'accuracy', 'iou@0.5', 'coherency'} <= set(history[0]['val'])


def test_explain_load_predicts_the_models_own_classification(finished):
  workdir, _ = finished
  loaded = explain.load(workdir)
  images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  logits = np.asarray(loaded._segment(loaded.explainer_variables, explain.normalize(images)))
  np.testing.assert_allclose(loaded.masks(images), 1 / (1 + np.exp(-logits)), atol=1e-5)
  np.testing.assert_allclose(loaded.predict(images), 1 / (1 + np.exp(-logits.mean(axis=(1, 2)))),
                             atol=1e-5)
  # The classifier checkpoint holds the explainer's own parameters.
  jax.tree.map(np.testing.assert_array_equal, loaded.classifier_variables['params']['segmenter'],
               loaded.explainer_variables['params'])


def test_rerun_reuses_the_finished_run(finished, data_dir):
  workdir, results = finished
  steps = sorted(os.listdir(os.path.join(workdir, 'explainer', 'checkpoints')))
  config = load_config('synthetic_self_explainer', 'smoke')
  config.data.data_dir = data_dir
  assert train.train_and_evaluate(config, workdir) == results
  assert sorted(os.listdir(os.path.join(workdir, 'explainer', 'checkpoints'))) == steps


def test_workdir_of_the_other_mode_is_refused(finished, data_dir):
  workdir, _ = finished
  config = load_config('synthetic', 'smoke')
  config.data.data_dir = data_dir
  with pytest.raises(errors.UserError, match='mode'):
    train.train_and_evaluate(config, workdir)
