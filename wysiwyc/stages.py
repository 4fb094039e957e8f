"""The Explainer's training stages: the classifier (trained, or loaded), then the Explainer
against it, frozen, after the black-box start's distillation when `explainer.init_from` asks for
it.
"""

import os

from absl import logging
import jax
from jax.sharding import Mesh

from wysiwyc import checkpointing
from wysiwyc import classifier_check
from wysiwyc import console
from wysiwyc import data_parallel
from wysiwyc import loop
from wysiwyc import model_setup
from wysiwyc import onnx_classifier
from wysiwyc import train_steps
from wysiwyc.data import pipeline
from wysiwyc.models import shipped


def classifier_stage(config, spec, workdir: str, mesh: Mesh, rng) -> tuple:
  """Stage 1: returns (classifier module, frozen variables), training it if needed; an ONNX
  file (`classifier.onnx`) is loaded instead (`onnx_stage`)."""
  if onnx_classifier.path_of(config):
    return onnx_stage(config, spec, workdir, mesh)
  classifier = model_setup.build_classifier(config, spec)
  directory = os.path.join(workdir, 'classifier')
  tc = train_steps.with_schedule_length(config.classifier.train,
                                        spec.num_examples.get('train', 0))
  source = config.classifier.get('checkpoint', '')
  # A classifier loaded from a checkpoint is not trained: no trainable/frozen split to make.
  tx = train_steps.make_optimizer(
      tc, 'all' if source else config.classifier.get('trainable', 'all'))
  state = data_parallel.replicate(
      train_steps.init_state(classifier, tx, rng, config.data.image_size), mesh)
  if source:
    console.say(loaded_classifier_line(source))
    variables = model_setup.load_classifier_checkpoint(source, state, config, spec)
    checkpointing.save(checkpointing.manager(os.path.join(directory, 'best'), max_to_keep=1), 0,
                       variables, {'source': source if shipped.is_zoo_reference(source)
                                   else os.path.abspath(source)})
    return classifier, data_parallel.replicate(train_steps.model_variables(**variables), mesh)
  state = model_setup.with_pretrained_weights(classifier, state, mesh)
  micro_batches = tc.get('grad_accum_steps', 1)
  data_parallel.check_batch_size(tc.batch_size, mesh, 'classifier.train.batch_size', micro_batches)
  stage = loop.Stage(
      name='classifier', directory=directory, train_config=tc,
      start=model_setup.start_description(config.classifier),
      log_dir=os.path.join(workdir, 'tensorboard', 'classifier'),
      train_step=train_steps.jit_train_step(train_steps.make_classifier_train_step(
          classifier, tx, spec.multilabel, micro_batches, object_masking(tc, spec),
          tc.get('masking_margin', 3)), mesh),
      eval_step=train_steps.jit_eval_step(
          train_steps.make_classifier_eval_step(classifier, spec.multilabel), mesh))
  state = loop.fit(stage, state, config, spec, mesh, rng)
  return classifier, state.variables()


def onnx_stage(config, spec, workdir: str, mesh: Mesh) -> tuple:
  """The classifier stage of an ONNX file: (its function as a module, its frozen weights);
  records what was loaded, with the file's sha256, in `classifier/onnx.json`."""
  loaded = onnx_classifier.from_config(config, spec.multilabel)
  console.say(onnx_classifier.stage_line(loaded.description))
  if jax.process_index() == 0:
    checkpointing.write_json_atomic(onnx_classifier.record_path(workdir), loaded.description)
  return (classifier_check.FunctionClassifier(loaded.apply_fn),
          data_parallel.replicate(loaded.variables, mesh))


def loaded_classifier_line(source: str) -> str:
  """The console line of a classifier that is loaded, not trained; a shipped one's with its test
  accuracy."""
  if shipped.is_zoo_reference(source):
    metadata = shipped.read_metadata(shipped.entry_name(source))
    return console.shipped_classifier_line(
        source, metadata.get('per_class_accuracy', {}).get('test'))
  return console.loaded_classifier_line(os.path.abspath(source))


def object_masking(train_config, spec) -> float:
  """`train_config.object_masking`, or 0 when the training split has no masks to mask with."""
  fraction = train_config.get('object_masking', 0.0)
  if fraction and 'train' in spec.unmasked_splits:
    logging.warning('classifier.train.object_masking=%g needs masks on the training images; this '
                    'data set has none, so the classifier trains without it.', fraction)
    return 0.0
  return fraction


def explainer_stage(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                    rng) -> tuple:
  """Stage 2: trains the explainer against the frozen classifier."""
  explainer = model_setup.build_explainer(config, spec)
  tc = config.explainer.train
  micro_batches = tc.get('grad_accum_steps', 1)
  start = model_setup.resolve_auto_start(config, explainer, classifier_variables)
  if start != config.explainer.get('init_from', ''):
    config = config.copy_and_resolve_references()
    config.explainer.init_from = start
  encoder_variables = classifier_variables
  if start == model_setup.DISTILL_START:
    encoder_variables = distill_stage(config, spec, workdir, mesh, classifier,
                                      classifier_variables, jax.random.fold_in(rng, 7))
  state, tx = model_setup.initial_explainer_state(config, spec, explainer, mesh, rng,
                                                  encoder_variables)
  if config.loss.get('fill') == model_setup.AUTO_FILL:
    config = config.copy_and_resolve_references()
    config.loss.fill = auto_fill(config, spec, classifier, classifier_variables)
  loss_fn = train_steps.explainer_loss_fn(config, spec.multilabel)
  train_step = train_steps.jit_train_step(
      train_steps.make_explainer_train_step(explainer, classifier, tx, loss_fn, micro_batches),
      mesh, num_replicated_args=1)
  eval_step = train_steps.jit_eval_step(
      train_steps.make_explainer_eval_step(explainer, classifier, loss_fn), mesh, 2)
  stage = loop.Stage(
      name='explainer', directory=os.path.join(workdir, 'explainer'), train_config=tc,
      start=model_setup.start_description(config.explainer),
      log_dir=os.path.join(workdir, 'tensorboard', 'explainer'),
      train_step=lambda s, b, r: train_step(s, classifier_variables, b, r),
      eval_step=lambda v, b: eval_step(v, classifier_variables, b))
  state = loop.fit(stage, state, config, spec, mesh, rng)
  return explainer, state.variables()


def auto_fill(config, spec, classifier, classifier_variables, num_images: int = 64) -> str:
  """`loss.fill='auto'` resolved by calling the classifier on the first `num_images` training
  images (`model_setup.scale_sensitivity`): 'blur' for a classifier that answers an image scaled
  down nearly as it answers the image, else 'zeros'; says which on the console."""
  batch = next(pipeline.as_numpy(pipeline.make_dataset(
      config.data, 'train', num_images, training=False, seed=config.seed,
      max_examples=num_images)))
  images = batch['image'][batch['valid']]
  sensitivity = model_setup.scale_sensitivity(
      lambda x: classifier.apply(classifier_variables, x, train=False), images, spec.multilabel)
  fill = model_setup.fill_for_sensitivity(sensitivity)
  console.say(f"explainer: loss.fill='auto' -> {fill!r} (scaling an image by "
              f"{model_setup.SCALE_PROBE:g} moves the classifier's answer {sensitivity:.2g} of "
              'the way to its answer to a blank image; below '
              f'{model_setup.SCALE_INVARIANT_BELOW:g} a zero fill would not remove what a mask '
              'drops)')
  return fill


def distill_stage(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                  rng) -> dict:
  """The black-box start: trains a network with the shapes of the Explainer's encoder
  (`model_setup.build_distill_student`) to give the frozen classifier's soft predictions on the
  training images, calling the classifier and never reading its parameters; returns the
  student's variables, whose convolutions become the Explainer's encoder."""
  student = model_setup.build_distill_student(config, spec)
  tc = train_steps.with_schedule_length(config.explainer.distill,
                                        spec.num_examples.get('train', 0))
  micro_batches = tc.get('grad_accum_steps', 1)
  data_parallel.check_batch_size(tc.batch_size, mesh, 'explainer.distill.batch_size',
                                 micro_batches)
  tx = train_steps.make_optimizer(tc)
  state = data_parallel.replicate(
      train_steps.init_state(student, tx, rng, config.data.image_size), mesh)
  train_step = train_steps.jit_train_step(
      train_steps.make_distill_train_step(student, classifier, tx, spec.multilabel,
                                          micro_batches), mesh, num_replicated_args=1)
  eval_step = train_steps.jit_eval_step(
      train_steps.make_distill_eval_step(student, classifier, spec.multilabel), mesh, 2)
  stage = loop.Stage(
      name='distill', directory=os.path.join(workdir, 'distill'), train_config=tc,
      start="random weights, learning the classifier's predictions",
      log_dir=os.path.join(workdir, 'tensorboard', 'distill'),
      train_step=lambda s, b, r: train_step(s, classifier_variables, b, r),
      eval_step=lambda v, b: eval_step(v, classifier_variables, b))
  return loop.fit(stage, state, config, spec, mesh, rng).variables()
