"""The self-explaining classifier (seed 002; the authors' InterpretableFCNN), as a training mode.

One U-Net gives per-class mask logits S (B,H,W,C); its classification logits are the spatial
mean of S, so what it classifies is, by construction, what its masks show. Each step runs a
teacher pass on the image and a student pass on the image kept by the teacher's target mask;
the loss is `losses.self_explainer_loss` (DESIGN.md section 1), every term weighted from
`config.loss`.

The workdir is laid out like the Explainer's, so `evaluation` and `wysiwyc.explain` (which
imports this module for a self-explainer workdir) read it as they read any other:
`explainer/` holds the U-Net (its training loop and best variables) and `classifier/best` the
same variables wrapped in `SelfExplainerHead` (logits = mean of the masks' logits), registered
as the classifier 'self_explainer_head'.
"""

import functools
import os
from typing import Callable, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh
import optax

from wysiwyc import checkpointing
from wysiwyc import errors
from wysiwyc import loop
from wysiwyc import losses
from wysiwyc import metrics
from wysiwyc import model_setup
from wysiwyc import models
from wysiwyc import train_steps

HEAD_NAME = 'self_explainer_head'
# Arguments of `losses.self_explainer_loss` that `config.loss` may set (besides `kind`).
LOSS_FIELDS = ('lambda_c', 'lambda_similarity', 'lambda_tv', 'lambda_ac', 'lambda_t',
               'lambda_nt', 'lambda_coherency', 'min_area', 'max_area')


class SelfExplainerHead(nn.Module):
  """A segmenter seen as a classifier: logits (B,C) = mean over H,W of its logits (B,H,W,C).

  Its variables are the segmenter's nested under 'segmenter' (see `head_variables`).
  """
  segmenter: nn.Module

  def __call__(self, images, train: bool = False):
    segmentations = self.segmenter(images, train=train)
    chex.assert_rank(segmentations, 4)
    return segmentations.astype(jnp.float32).mean(axis=(1, 2))


@models.classifiers.register(HEAD_NAME)
def self_explainer_head(num_classes: int, explainer: str = 'unet', **explainer_kwargs
                        ) -> SelfExplainerHead:
  """Classifier factory: the explainer `explainer` built with `explainer_kwargs`, mean-pooled."""
  return SelfExplainerHead(
      segmenter=models.build_explainer(explainer, num_classes, **explainer_kwargs))


def head_kwargs(explainer_config: ml_collections.ConfigDict) -> dict:
  """The `classifier.kwargs` that make 'self_explainer_head' wrap `explainer_config`'s model."""
  return {'explainer': explainer_config.name, **explainer_config.kwargs.to_dict()}


def head_variables(segmenter_variables: dict) -> dict:
  """The segmenter's variables as `SelfExplainerHead` variables (same arrays, nested)."""
  return {collection: {'segmenter': tree} for collection, tree in segmenter_variables.items()
          if tree}


# ----------------------------------------------------------------------------------------------
# Pure steps.


def self_explainer_loss_fn(config: ml_collections.ConfigDict, multilabel: bool) -> Callable:
  """(segment, images, targets) -> (loss, aux) with the weights of `config.loss`."""
  if config.loss.get('kind') != 'self_explainer':
    raise errors.UserError(f"mode='self_explainer' needs loss.kind='self_explainer', got "
                           f'{config.loss.get("kind")!r}.')
  unknown = sorted(set(config.loss) - set(LOSS_FIELDS) - {'kind'})
  if unknown:
    raise errors.UserError(f'Unknown self-explainer loss fields {unknown}; choose from '
                           f'{list(LOSS_FIELDS)}.')
  kwargs = {k: v for k, v in config.loss.items() if k != 'kind'}
  return functools.partial(losses.self_explainer_loss, multilabel=multilabel, **kwargs)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_fn: Callable,
                    micro_batches: int = 1) -> Callable:
  """(state, batch, rng) -> (state, loss terms): teacher and student pass through `model`."""
  def step(state: train_steps.TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)

    def objective(params, batch_stats, batch, rng):
      # Both passes run in training mode, each normalized by its own batch's statistics; only the
      # teacher's update the running statistics. They are what the model uses on plain images
      # at evaluation; mixing in the masked student images left a batch-norm self-explainer
      # unable to classify plain images (validation accuracy at the 'no class' rate).
      updated = []

      def segment(images):
        segmentations, new_stats = train_steps.apply_model(model, params, batch_stats, images,
                                                           train=True, rng=rng)
        updated.append(new_stats)
        return segmentations

      loss, aux = loss_fn(segment, batch['image'], batch['labels'])
      return loss, (aux, updated[0])

    aux, batch_stats, grads = train_steps.accumulate_gradients(
        objective, state.params, state.batch_stats, batch, rng, micro_batches)
    return train_steps.apply_gradients(state, tx, grads, batch_stats), aux
  return step


def make_eval_step(model: nn.Module, loss_fn: Callable, multilabel: bool) -> Callable:
  """Per-image loss terms, the model's own classification accuracy and the merged-mask IoU@0.5."""
  def step(variables, batch):
    segment = lambda images: model.apply(variables, images, train=False)
    per_image = jax.vmap(lambda x, y: loss_fn(segment, x[None], y[None])[1])(
        batch['image'], batch['labels'])
    segmentations = segment(batch['image'])
    per_image['accuracy'] = train_steps.per_class_accuracy(segmentations.mean(axis=(1, 2)),
                                                           batch['labels'], multilabel)
    merged = metrics.merge_class_masks(jax.nn.sigmoid(segmentations), batch['labels'])
    per_image['iou@0.5'] = jax.vmap(functools.partial(metrics.discrete_iou, threshold=0.5))(
        merged, batch['foreground'])
    return per_image
  return step


# ----------------------------------------------------------------------------------------------
# The stage.


def check_config(config: ml_collections.ConfigDict) -> None:
  """The classifier of a self-explainer workdir must be the head over its own explainer."""
  if config.classifier.get('checkpoint', ''):
    raise errors.UserError("mode='self_explainer' trains its own classifier; leave "
                           'classifier.checkpoint empty.')
  expected = head_kwargs(config.explainer)
  if config.classifier.name != HEAD_NAME or config.classifier.kwargs.to_dict() != expected:
    raise errors.UserError(
        f"mode='self_explainer' needs classifier.name={HEAD_NAME!r} and classifier.kwargs="
        f'{expected} (the explainer it pools), got {config.classifier.name!r} and '
        f'{config.classifier.kwargs.to_dict()}. Change the model through explainer.*.')


def self_explainer_stage(config, spec, workdir: str, mesh: Mesh, rng
                         ) -> Tuple[nn.Module, dict, nn.Module, dict]:
  """Trains the self-explainer (or reuses a finished run) into `workdir`.

  Returns (head, head_variables, segmenter, segmenter_variables): the classifier and explainer
  arguments of `evaluation.evaluate_and_report`.
  """
  check_config(config)
  segmenter = model_setup.build_explainer(config, spec)
  head = model_setup.build_classifier(config, spec)
  tc = config.explainer.train
  micro_batches = tc.get('grad_accum_steps', 1)
  state, tx = model_setup.initial_explainer_state(config, spec, segmenter, mesh, rng)
  loss_fn = self_explainer_loss_fn(config, spec.multilabel)
  stage = loop.Stage(
      name='self_explainer', directory=os.path.join(workdir, 'explainer'), train_config=tc,
      start=model_setup.start_description(config.explainer),
      log_dir=os.path.join(workdir, 'tensorboard', 'self_explainer'),
      train_step=train_steps.jit_train_step(make_train_step(segmenter, tx, loss_fn, micro_batches),
                                            mesh),
      eval_step=train_steps.jit_eval_step(make_eval_step(segmenter, loss_fn, spec.multilabel),
                                          mesh))
  state = loop.fit(stage, state, config, spec, mesh, rng)
  segmenter_variables = state.variables()
  classifier_variables = head_variables(segmenter_variables)
  # `classifier/best` makes the workdir self-describing for `wysiwyc.explain`.
  checkpointing.save(
      checkpointing.manager(os.path.join(workdir, 'classifier', 'best'), max_to_keep=1), 0,
      {'params': classifier_variables['params'],
       'batch_stats': classifier_variables.get('batch_stats', {})},
      {'source': 'self_explainer: explainer/best pooled over H,W'})
  return head, classifier_variables, segmenter, segmenter_variables
