"""Tests of the black-box start (`explainer.init_from='distill'`): its loss, that it only calls
the classifier, and that the paper configs leave it and the other non-paper terms off."""

import types
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import load_config, smoke_config
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import losses
from wysiwyc import model_setup
from wysiwyc import models
from wysiwyc import stages
from wysiwyc.data import pipeline


def test_distillation_loss_is_the_cross_entropy_against_the_teachers_soft_predictions():
  student = jax.random.normal(jax.random.key(0), (4, 5))
  teacher = 3.0 * jax.random.normal(jax.random.key(1), (4, 5))
  p, q = jax.nn.sigmoid(teacher), jax.nn.sigmoid(student)
  bce = -(p * jnp.log(q) + (1 - p) * jnp.log(1 - q)).mean()
  np.testing.assert_allclose(losses.distillation_loss(student, teacher), bce, rtol=1e-5)
  soft = jax.nn.softmax(teacher)
  ce = -(soft * jax.nn.log_softmax(student)).sum(-1).mean()
  np.testing.assert_allclose(losses.distillation_loss(student, teacher, multilabel=False), ce,
                             rtol=1e-5)
  # Lowest when the student gives the teacher's predictions; the teacher gets no gradient.
  assert losses.distillation_loss(teacher, teacher) < losses.distillation_loss(student, teacher)
  teacher_grad = jax.grad(lambda t: losses.distillation_loss(student, t))(teacher)
  np.testing.assert_array_equal(teacher_grad, 0.0)


class OpaqueClassifier(nn.Module):
  """A classifier seen only as a function of the images: no variables, no layers to read."""
  classify: Callable

  def __call__(self, images, train: bool = False):
    del train
    return self.classify(images)


def test_black_box_start_trains_against_a_classifier_it_can_only_call(tmp_path):
  config = smoke_config(str(tmp_path / 'tfds'))
  config.explainer.init_from = model_setup.DISTILL_START
  config.explainer.distill.max_steps = 8
  config.explainer.distill.learning_rate = 1e-2
  spec = pipeline.prepare(config.data)
  mesh = data_parallel.create_mesh()
  hidden = models.classifiers.build('simple_cnn', len(spec.class_names), width=4, depth=2,
                                    pooling='avg')
  size = config.data.image_size
  hidden_variables = hidden.init(jax.random.key(5), jnp.zeros((1, size, size, 3)))
  calls = []

  offsets = jnp.linspace(-3.0, 3.0, len(spec.class_names))  # decided predictions to learn

  def classify(images):
    calls.append(images.shape)
    return hidden.apply(hidden_variables, images) + offsets

  opaque = OpaqueClassifier(classify)
  assert not opaque.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))  # nothing to read
  student = stages.distill_stage(config, spec, str(tmp_path / 'w'), mesh, opaque, {},
                                 jax.random.key(1))
  assert calls  # the classifier was called (traced into the steps) ...
  first, _ = jax.tree.flatten(student['params'])
  started = model_setup.build_distill_student(config, spec).init(
      jax.random.key(1), jnp.zeros((1, size, size, 3)))
  assert any(not np.allclose(a, b) for a, b in zip(first, jax.tree.leaves(started['params'])))
  # ... and its student learned: it agrees with the classifier more than a fresh student does.
  images = next(pipeline.as_numpy(pipeline.make_dataset(config.data, 'validation', 16,
                                                        training=False, seed=0)))['image']
  teacher = classify(images)
  network = model_setup.build_distill_student(config, spec)
  trained_loss = losses.distillation_loss(network.apply(jax.device_get(student), images), teacher)
  fresh_loss = losses.distillation_loss(network.apply(started, images), teacher)
  assert trained_loss < fresh_loss
  # The Explainer's encoder is the student's: the start reads the student, not the classifier.
  explainer = model_setup.build_explainer(config, spec)
  state, _ = model_setup.initial_explainer_state(config, spec, explainer, mesh,
                                                 jax.random.key(2), student)
  params = jax.device_get(state.params)
  for level in range(config.explainer.kwargs.depth + 1):
    for a, b in zip(jax.tree.leaves(params[f'ConvBlock_{level}']),
                    jax.tree.leaves(student['params'][f'blocks_{level}']), strict=True):
      np.testing.assert_array_equal(a, b)


def test_distill_start_refuses_an_explainer_without_an_encoder_to_fill(tmp_path):
  config = smoke_config(str(tmp_path))
  config.explainer.name = 'deeplab'
  with pytest.raises(errors.UserError, match="init_from='distill' needs explainer.name='unet'"):
    model_setup.build_distill_student(config, types_spec(3))


def types_spec(num_classes):
  return types.SimpleNamespace(class_names=[f'c{i}' for i in range(num_classes)])


@pytest.mark.parametrize('name', ['voc', 'coco', 'cub'])
def test_paper_configs_keep_the_paper_loss_and_start(name):
  config = load_config(name)
  for term in ('lambda_single', 'lambda_overlap', 'lambda_pooled'):
    assert config.loss.get(term, 0.0) == 0.0, term
  assert config.explainer.get('init_from', '') != model_setup.DISTILL_START


def test_distill_student_has_the_shapes_of_the_explainers_encoder(tmp_path):
  config = load_config('synthetic')
  spec = types_spec(6)
  size = config.data.image_size
  student = model_setup.build_distill_student(config, spec).init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)))
  explainer = model_setup.build_explainer(config, spec).init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)))
  for level in range(config.explainer.kwargs.depth + 1):
    got = jax.tree.map(jnp.shape, student['params'][f'blocks_{level}'])
    want = jax.tree.map(jnp.shape, explainer['params'][f'ConvBlock_{level}'])
    assert got == want


def test_auto_start_copies_a_fitting_simple_cnn_and_distills_for_any_other_classifier(tmp_path):
  config = smoke_config(str(tmp_path))
  config.explainer.init_from = model_setup.AUTO_START
  spec = types_spec(6)
  size = config.data.image_size
  explainer = model_setup.build_explainer(config, spec)

  def variables_of(name, **kwargs):
    module = models.classifiers.build(name, 6, **kwargs)
    return module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))

  fitting = variables_of('simple_cnn', **config.classifier.kwargs)
  assert model_setup.resolve_auto_start(config, explainer, fitting) == 'classifier'
  wider = variables_of('simple_cnn', **{**config.classifier.kwargs, 'width': 16})
  resnet = variables_of('resnet', width=8, depth=2)
  for variables in (wider, resnet, {}):  # {}: a classifier seen only as a function
    assert model_setup.resolve_auto_start(config, explainer, variables) == 'distill'
  config.explainer.init_from = ''
  assert model_setup.resolve_auto_start(config, explainer, fitting) == ''


def per_image_normalized(images):
  """What a classifier that normalizes each image at its input sees: the same for x and a x."""
  centered = images - images.mean(axis=(1, 2, 3), keepdims=True)
  return centered / jnp.sqrt((centered ** 2).mean(axis=(1, 2, 3), keepdims=True) + 1e-12)


def test_auto_fill_blurs_for_a_classifier_that_normalizes_each_image_and_else_keeps_zeros(
    tmp_path):
  config = smoke_config(str(tmp_path / 'tfds'))
  config.loss.fill = model_setup.AUTO_FILL
  spec = pipeline.prepare(config.data)
  num_classes = len(spec.class_names)
  weights = jax.random.normal(jax.random.key(0), (3, num_classes))
  pooled = lambda x: x.mean(axis=(1, 2)) @ weights * 3.0 + x.std(axis=(1, 2, 3))[:, None]
  plain = OpaqueClassifier(pooled)
  normalizing = OpaqueClassifier(lambda x: pooled(per_image_normalized(x)))
  images = next(pipeline.as_numpy(pipeline.make_dataset(config.data, 'train', 16,
                                                        training=False, seed=0)))['image']
  sensitivity = lambda module, multilabel: model_setup.scale_sensitivity(
      lambda x: module.apply({}, x), images, multilabel)
  for multilabel in (True, False):  # a ratio: softmax's small probabilities do not hide it
    assert sensitivity(normalizing, multilabel) < 1e-3, multilabel
    assert sensitivity(plain, multilabel) > model_setup.SCALE_INVARIANT_BELOW + 0.2, multilabel
  assert stages.auto_fill(config, spec, normalizing, {}) == 'blur'
  assert stages.auto_fill(config, spec, plain, {}) == 'zeros'
  assert model_setup.fill_for_sensitivity(0.9) == 'zeros'


def test_fill_is_auto_where_the_classifier_is_unknown_and_zeros_in_the_paper_configs():
  assert load_config('folder').loss.fill == model_setup.AUTO_FILL
  for name in ('voc', 'coco', 'cub', 'synthetic'):
    assert load_config(name).loss.get('fill', 'zeros') == 'zeros', name
