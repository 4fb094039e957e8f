"""The train state, the optimizer, and the pure train and evaluation steps of the stages.

Every step is one pure function jitted with explicit shardings over the mesh of
`wysiwyc.devices`: the batch is split along its `data` axis, parameters and optimizer state are
replicated, the state is donated.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import optax

from wysiwyc import errors
from wysiwyc import losses
from wysiwyc import metrics
from wysiwyc import models
from wysiwyc.data import augment


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict:
    return model_variables(self.params, self.batch_stats)


def model_variables(params, batch_stats) -> dict:
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               image_size: int) -> TrainState:
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, dummy, train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def apply_model(model: nn.Module, params, batch_stats, images, train: bool, rng=None):
  """Runs `model`; in training mode also returns the updated batch statistics."""
  variables = model_variables(params, batch_stats)
  rngs = {'dropout': rng} if rng is not None else None
  if train and batch_stats:
    out, updates = model.apply(variables, images, train=True, mutable=['batch_stats'], rngs=rngs)
    return out, updates['batch_stats']
  return model.apply(variables, images, train=train, rngs=rngs), batch_stats


def make_optimizer(train_config: ml_collections.ConfigDict,
                   trainable: str = 'all') -> optax.GradientTransformation:
  """Adam (the paper's optimizer), with optional global-norm clipping. `trainable='head'` updates
  only the parameters under top-level names 'head*' (the paper's frozen backbone); the others
  get zero updates and no optimizer state."""
  chain = []
  if train_config.get('grad_clip', 0.0):
    chain.append(optax.clip_by_global_norm(train_config.grad_clip))
  chain.append(optax.adam(learning_rate_schedule(train_config)))
  if trainable == 'all':
    return optax.chain(*chain)
  return optax.multi_transform(
      {'train': optax.chain(*chain), 'frozen': optax.set_to_zero()},
      functools.partial(models.zoo.trainable_labels, trainable=trainable))


def learning_rate_schedule(train_config: ml_collections.ConfigDict):
  """`schedule='constant'` (the paper's) or 'cosine': linear warm-up over `warmup_steps`, then
  cosine decay to 1% of `learning_rate` at `decay_steps` (0: see `with_schedule_length`)."""
  schedule = train_config.get('schedule', 'constant')
  lr = train_config.learning_rate
  if schedule == 'constant':
    return lr
  if schedule == 'cosine':
    decay_steps = train_config.get('decay_steps', 0)
    warmup_steps = train_config.get('warmup_steps', 0)
    if decay_steps <= warmup_steps:
      raise errors.UserError(f"schedule='cosine' needs decay_steps > warmup_steps, got "
                             f'{decay_steps} and {warmup_steps}; set decay_steps to the number '
                             "of training steps, or to 0 for the stage's whole length.")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, decay_steps, lr * 0.01)
  raise errors.UserError(f"Unknown schedule {schedule!r}; choose 'constant' or 'cosine'.")


def with_schedule_length(train_config: ml_collections.ConfigDict,
                         num_train_examples: int) -> ml_collections.ConfigDict:
  """`train_config` as is, or, for `schedule='cosine'` with `decay_steps=0`, a copy whose decay
  spans the stage's whole length: `max_steps`, else `num_epochs` epochs of the training split
  (a warm-up as long as that shrinks to a tenth of it). Lets a config decay over data whose size
  it does not know (a user's folder)."""
  if train_config.get('schedule', 'constant') != 'cosine' or train_config.get('decay_steps', 0):
    return train_config
  steps_per_epoch = max(num_train_examples // train_config.batch_size, 1)
  steps = train_config.get('max_steps', 0) or train_config.num_epochs * steps_per_epoch
  resolved = ml_collections.ConfigDict(train_config.to_dict())
  resolved.decay_steps = steps
  if resolved.get('warmup_steps', 0) >= steps:
    resolved.warmup_steps = steps // 10
  return resolved


def set_step_budget(train_config: ml_collections.ConfigDict, steps: int) -> None:
  """Makes a stage run `steps` steps, a cosine schedule (if any) decaying over exactly those."""
  train_config.max_steps = steps
  if train_config.get('schedule', 'constant') == 'cosine':
    train_config.decay_steps = steps
    train_config.warmup_steps = min(train_config.get('warmup_steps', 0), steps // 10)


def classifier_loss(logits, labels, multilabel: bool):
  return losses.classification_loss(logits, labels, multilabel=multilabel)


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads,
                    batch_stats) -> TrainState:
  """`state` one optimizer step further: `tx`'s update of `grads`, the new batch statistics."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def accumulate_gradients(objective: Callable, params, batch_stats, batch, rng,
                         micro_batches: int = 1) -> tuple:
  """Gradients of `objective` on `batch`, computed over `micro_batches` equal slices in turn.

  `objective(params, batch_stats, batch, rng) -> (loss, (metrics, batch_stats))`, where the loss
  and metrics are means over the batch. Returns (metrics, batch_stats, grads), the metrics and
  gradients averaged over the slices: for per-example means this equals one pass over the whole
  batch (up to float rounding), in a fraction of the activation memory. BatchNorm statistics are
  those of each slice, their running averages updated once per slice.
  """
  grad_fn = jax.grad(objective, has_aux=True)
  if micro_batches == 1:
    grads, (step_metrics, batch_stats) = grad_fn(params, batch_stats, batch, rng)
    return step_metrics, batch_stats, grads

  def split(x):  # Row i -> slice i % k: each slice keeps its rows on their devices.
    return jnp.moveaxis(x.reshape((-1, micro_batches) + x.shape[1:]), 1, 0)

  def body(carry, inputs):
    grads_sum, batch_stats = carry
    index, micro_batch = inputs
    grads, (step_metrics, batch_stats) = grad_fn(params, batch_stats, micro_batch,
                                                 jax.random.fold_in(rng, index))
    return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats), step_metrics

  (grads, batch_stats), step_metrics = jax.lax.scan(
      body, (jax.tree.map(jnp.zeros_like, params), batch_stats),
      (jnp.arange(micro_batches), jax.tree.map(split, batch)))
  mean = lambda tree: jax.tree.map(lambda x: x.mean(axis=0), tree)
  return mean(step_metrics), batch_stats, jax.tree.map(lambda g: g / micro_batches, grads)


def make_classifier_train_step(model: nn.Module, tx, multilabel: bool,
                               micro_batches: int = 1, object_masking: float = 0.0,
                               masking_margin: int = 3) -> Callable:
  """The classifier's train step; `object_masking` > 0 masks that fraction of the training
  images with their objects' masks first (`wysiwyc.data.augment.mask_objects`)."""
  def step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if object_masking:
      rng, masking_rng = jax.random.split(rng)
      images, labels = augment.mask_objects(masking_rng, batch['image'], batch['labels'],
                                            batch['class_masks'], object_masking, masking_margin)
      batch = {**batch, 'image': images, 'labels': labels}

    def loss_fn(params, batch_stats, batch, rng):
      logits, batch_stats = apply_model(model, params, batch_stats, batch['image'],
                                        train=True, rng=rng)
      loss = classifier_loss(logits, batch['labels'], multilabel)
      accuracy = per_class_accuracy(logits, batch['labels'], multilabel).mean()
      return loss, ({'loss': loss, 'accuracy': accuracy}, batch_stats)

    step_metrics, batch_stats, grads = accumulate_gradients(
        loss_fn, state.params, state.batch_stats, batch, rng, micro_batches)
    return apply_gradients(state, tx, grads, batch_stats), step_metrics
  return step


def per_class_accuracy(logits, labels, multilabel: bool):
  """(B,) accuracy of each image: mean over classes of thresholded-sigmoid correctness
  (multi-label), or top-1 correctness (single label)."""
  if multilabel:
    return ((logits > 0) == (labels > 0.5)).mean(axis=-1)
  return (logits.argmax(-1) == labels.argmax(-1)).astype(jnp.float32)


def make_classifier_eval_step(model: nn.Module, multilabel: bool) -> Callable:
  def step(variables, batch):
    logits = model.apply(variables, batch['image'], train=False)
    per_image_loss = jax.vmap(lambda l, y: classifier_loss(l[None], y[None], multilabel))(
        logits, batch['labels'])
    return {'loss': per_image_loss,
            'accuracy': per_class_accuracy(logits, batch['labels'], multilabel)}
  return step


def make_distill_train_step(student: nn.Module, classifier: nn.Module, tx,
                            multilabel: bool, micro_batches: int = 1) -> Callable:
  """The black-box start's train step: `student` learns the frozen classifier's soft predictions
  on the training images (`losses.distillation_loss`). The classifier is only called."""
  def step(state: TrainState, classifier_variables, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    teacher_logits = classifier.apply(classifier_variables, batch['image'], train=False)

    def objective(params, batch_stats, batch, rng):
      logits, batch_stats = apply_model(student, params, batch_stats, batch['image'],
                                        train=True, rng=rng)
      loss = losses.distillation_loss(logits, batch['teacher_logits'], multilabel)
      agreement = prediction_agreement(logits, batch['teacher_logits'], multilabel).mean()
      return loss, ({'loss': loss, 'agreement': agreement}, batch_stats)

    step_metrics, batch_stats, grads = accumulate_gradients(
        objective, state.params, state.batch_stats, {**batch, 'teacher_logits': teacher_logits},
        rng, micro_batches)
    return apply_gradients(state, tx, grads, batch_stats), step_metrics
  return step


def prediction_agreement(logits, teacher_logits, multilabel: bool):
  """(B,) how often two models decide alike: per-class agreement of the thresholded sigmoids
  (multi-label), or of the top class (single label)."""
  if multilabel:
    return ((logits > 0) == (teacher_logits > 0)).mean(axis=-1)
  return (logits.argmax(-1) == teacher_logits.argmax(-1)).astype(jnp.float32)


def make_distill_eval_step(student: nn.Module, classifier: nn.Module, multilabel: bool
                           ) -> Callable:
  def step(student_variables, classifier_variables, batch):
    teacher_logits = classifier.apply(classifier_variables, batch['image'], train=False)
    logits = student.apply(student_variables, batch['image'], train=False)
    per_image_loss = jax.vmap(
        lambda s, t: losses.distillation_loss(s[None], t[None], multilabel))(logits,
                                                                             teacher_logits)
    return {'loss': per_image_loss,
            'agreement': prediction_agreement(logits, teacher_logits, multilabel)}
  return step


def explainer_loss_fn(config: ml_collections.ConfigDict, multilabel: bool) -> Callable:
  """(segmentations, images, targets, classify) -> (loss, aux) for `config.loss.kind`."""
  kwargs = {k: v for k, v in config.loss.items() if k != 'kind'}
  if config.loss.kind == 'explainer':
    return functools.partial(losses.explainer_loss, multilabel=multilabel, **kwargs)
  if config.loss.kind == 'real_time_saliency':
    return functools.partial(losses.real_time_saliency_loss, **kwargs)
  raise errors.UserError(f"Unknown loss.kind {config.loss.kind!r}; choose 'explainer' or "
                   "'real_time_saliency'.")


def make_explainer_train_step(explainer: nn.Module, classifier: nn.Module, tx,
                              loss_fn: Callable, micro_batches: int = 1) -> Callable:
  def step(state: TrainState, classifier_variables, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    classify = lambda images: classifier.apply(classifier_variables, images, train=False)

    def objective(params, batch_stats, batch, rng):
      segmentations, batch_stats = apply_model(explainer, params, batch_stats,
                                               batch['image'], train=True, rng=rng)
      loss, aux = loss_fn(segmentations, batch['image'], batch['labels'], classify)
      return loss, (aux, batch_stats)

    aux, batch_stats, grads = accumulate_gradients(objective, state.params, state.batch_stats,
                                                   batch, rng, micro_batches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    return state, aux
  return step


def make_explainer_eval_step(explainer: nn.Module, classifier: nn.Module,
                             loss_fn: Callable) -> Callable:
  """Per-image validation loss terms plus the merged-mask IoU@0.5 against the foreground."""
  def step(explainer_variables, classifier_variables, batch):
    classify = lambda images: classifier.apply(classifier_variables, images, train=False)
    segmentations = explainer.apply(explainer_variables, batch['image'], train=False)
    per_image = jax.vmap(lambda s, x, y: loss_fn(s[None], x[None], y[None], classify)[1])(
        segmentations, batch['image'], batch['labels'])
    merged = metrics.merge_class_masks(jax.nn.sigmoid(segmentations), batch['labels'])
    per_image['iou@0.5'] = jax.vmap(functools.partial(metrics.discrete_iou, threshold=0.5))(
        merged, batch['foreground'])
    return per_image
  return step


def jit_train_step(step_fn: Callable, mesh: Mesh, num_replicated_args: int = 0) -> Callable:
  """Jits `step(state, *replicated, batch, rng)` with the batch sharded and the state donated."""
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  in_shardings = (repl,) + (repl,) * num_replicated_args + (data, repl)
  return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(repl, repl),
                 donate_argnums=(0,))


def jit_eval_step(step_fn: Callable, mesh: Mesh, num_replicated_args: int = 1) -> Callable:
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  return jax.jit(step_fn, in_shardings=(repl,) * num_replicated_args + (data,),
                 out_shardings=data)
