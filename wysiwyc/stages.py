"""The Explainer's two training stages: the classifier (trained, or loaded), then the
Explainer against it, frozen.
"""

import os

from jax.sharding import Mesh

from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import loop
from wysiwyc import model_setup
from wysiwyc import train_steps
from wysiwyc.models import shipped


def classifier_stage(config, spec, workdir: str, mesh: Mesh, rng) -> tuple:
  """Stage 1: returns (classifier module, frozen variables), training it if needed."""
  classifier = model_setup.build_classifier(config, spec)
  directory = os.path.join(workdir, 'classifier')
  tc = config.classifier.train
  source = config.classifier.get('checkpoint', '')
  # A classifier loaded from a checkpoint is not trained: no trainable/frozen split to make.
  tx = train_steps.make_optimizer(
      tc, 'all' if source else config.classifier.get('trainable', 'all'))
  state = data_parallel.replicate(
      train_steps.init_state(classifier, tx, rng, config.data.image_size), mesh)
  if source:
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
      log_dir=os.path.join(workdir, 'tensorboard', 'classifier'),
      train_step=train_steps.jit_train_step(train_steps.make_classifier_train_step(
          classifier, tx, spec.multilabel, micro_batches, tc.get('object_masking', 0.0),
          tc.get('masking_margin', 3)), mesh),
      eval_step=train_steps.jit_eval_step(
          train_steps.make_classifier_eval_step(classifier, spec.multilabel), mesh))
  state = loop.fit(stage, state, config, spec, mesh, rng)
  return classifier, state.variables()


def explainer_stage(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                    rng) -> tuple:
  """Stage 2: trains the explainer against the frozen classifier."""
  explainer = model_setup.build_explainer(config, spec)
  tc = config.explainer.train
  micro_batches = tc.get('grad_accum_steps', 1)
  data_parallel.check_batch_size(tc.batch_size, mesh, 'explainer.train.batch_size', micro_batches)
  tx = train_steps.make_optimizer(tc)
  state = data_parallel.replicate(
      train_steps.init_state(explainer, tx, rng, config.data.image_size), mesh)
  state = model_setup.with_pretrained_weights(explainer, state, mesh)
  state = model_setup.with_initial_explainer(config, spec, state, mesh)
  loss_fn = train_steps.explainer_loss_fn(config, spec.multilabel)
  train_step = train_steps.jit_train_step(
      train_steps.make_explainer_train_step(explainer, classifier, tx, loss_fn, micro_batches),
      mesh, num_replicated_args=1)
  eval_step = train_steps.jit_eval_step(
      train_steps.make_explainer_eval_step(explainer, classifier, loss_fn), mesh, 2)
  stage = loop.Stage(
      name='explainer', directory=os.path.join(workdir, 'explainer'), train_config=tc,
      log_dir=os.path.join(workdir, 'tensorboard', 'explainer'),
      train_step=lambda s, b, r: train_step(s, classifier_variables, b, r),
      eval_step=lambda v, b: eval_step(v, classifier_variables, b))
  state = loop.fit(stage, state, config, spec, mesh, rng)
  return explainer, state.variables()
