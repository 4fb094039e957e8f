"""Training: stage 1 fits the classifier, stage 2 the Explainer against it (frozen), then eval.

Every step is one pure function jitted with explicit shardings over a `Mesh` with a `data`
axis: the batch is split along it, parameters and optimizer state are replicated, the state is
donated. One device is a mesh of size one, so more devices or hosts are a launch change only.
"""

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable, Dict, Iterator, Optional

from absl import logging
import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from wysiwyc import checkpointing
from wysiwyc import errors
from wysiwyc import losses
from wysiwyc import metrics
from wysiwyc import models
from wysiwyc.data import augment
from wysiwyc.data import pipeline
from wysiwyc.data import sources
from wysiwyc.models import shipped

Batch = Dict[str, np.ndarray]


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


# ----------------------------------------------------------------------------------------------
# Devices and data.


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name `data`.

  Auto axis types: the compiler propagates shardings (reshapes inside the models need no
  annotations); the explicit in/out shardings of the jitted steps pin down the layout.
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(batch_size: int, mesh: Mesh, what: str, micro_batches: int = 1) -> None:
  """Refuses a global batch that does not split evenly over devices, processes and the
  `micro_batches` of gradient accumulation."""
  devices, processes = mesh.devices.size, jax.process_count()
  if micro_batches < 1:
    raise errors.UserError(f'grad_accum_steps = {micro_batches}; it must be 1 or more.')
  if batch_size % (devices * micro_batches) or batch_size % processes:
    accum = f' x {micro_batches} micro-batches' if micro_batches > 1 else ''
    raise errors.UserError(f'{what} = {batch_size} does not divide over {devices} devices in '
                     f'{processes} processes{accum}; set it to a multiple of '
                     f'{devices * micro_batches}.')


def shard_batch(batch: Batch, mesh: Mesh) -> Dict[str, jax.Array]:
  """Assembles per-process numpy batches into global arrays sharded along `data`."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def fetch_global(tree: Any) -> Any:
  """Global arrays -> numpy arrays of the whole global batch, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_block(mesh: Mesh) -> int:
  """Which of `jax.process_count()` equal contiguous blocks of every global batch this process
  feeds: where `shard_batch` puts its rows (its devices' place on the `data` axis)."""
  places = [i for i, device in enumerate(mesh.devices.flat)
            if device.process_index == jax.process_index()]
  size = mesh.devices.size // jax.process_count()
  if places != list(range(places[0], places[0] + size)) or places[0] % size:
    raise ValueError(f'Process {jax.process_index()} holds places {places} of the mesh, not one '
                     f'block of {size} consecutive places.')
  return places[0] // size


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
  cosine decay to 1% of `learning_rate` at `decay_steps`."""
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
                             'of training steps.')
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, decay_steps, lr * 0.01)
  raise errors.UserError(f"Unknown schedule {schedule!r}; choose 'constant' or 'cosine'.")


def set_step_budget(train_config: ml_collections.ConfigDict, steps: int) -> None:
  """Makes a stage run `steps` steps, a cosine schedule (if any) decaying over exactly those."""
  train_config.max_steps = steps
  if train_config.get('schedule', 'constant') == 'cosine':
    train_config.decay_steps = steps
    train_config.warmup_steps = min(train_config.get('warmup_steps', 0), steps // 10)


def with_pretrained_weights(model: nn.Module, state: TrainState, mesh: Mesh) -> TrainState:
  """A fresh state with the model's pretrained weights put in (zoo backbones; others as is)."""
  variables = models.load_pretrained(model, {'params': state.params,
                                             'batch_stats': state.batch_stats})
  return replicate(state.replace(params=variables['params'],
                                 batch_stats=variables['batch_stats']), mesh)


def check_inputs_available(config: ml_collections.ConfigDict) -> None:
  """Stops, before anything is written, when the data or pretrained weights of `config` are
  neither on this machine nor downloadable, with one message naming all of them."""
  problems = list(pipeline.missing_data(config.data))
  # The number of classes does not matter for a weights file; 1 avoids preparing the data.
  builders = [lambda: models.build_explainer(config.explainer.name, 1, **config.explainer.kwargs)]
  if not config.classifier.get('checkpoint', ''):
    builders.append(lambda: models.classifiers.build(config.classifier.name, 1,
                                                     **config.classifier.kwargs))
  for build in builders:
    try:
      module = build()
    except (ValueError, TypeError):  # Not buildable yet (e.g. registered by its stage): the
      continue                       # stage that builds it reports any problem.
    problem = models.missing_pretrained(module)
    if problem:
      problems.append(problem)
  init_from = config.explainer.get('init_from', '')
  if shipped.is_zoo_reference(init_from):
    entries = shipped.available()
    if shipped.entry_name(init_from) not in entries:
      problems.append(f'explainer.init_from={init_from!r}: no such zoo entry (shipped: '
                      f"{', '.join(entries) or 'none'}); fix the name or leave it empty.")
  elif init_from and not os.path.isdir(init_from):
    problems.append(f'explainer.init_from={init_from!r}: no such folder (a wysiwyc workdir, an '
                    "orbax checkpoint folder or 'zoo:NAME'); fix the path or leave it empty.")
  if problems:
    raise errors.UserError(sources.format_missing(problems))


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


def masked_mean(values: np.ndarray, valid: np.ndarray) -> float:
  return float(np.sum(values * valid) / max(np.sum(valid), 1))


# ----------------------------------------------------------------------------------------------
# Pure steps.


def classifier_loss(logits, labels, multilabel: bool):
  return losses.classification_loss(logits, labels, multilabel=multilabel)


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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    return state, step_metrics
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


# ----------------------------------------------------------------------------------------------
# The loop shared by every stage.


class Preempted(Exception):
  """Raised after a SIGTERM once the state is saved; the run can be restarted."""


class _SigtermFlag:
  """Turns SIGTERM (a preemption notice) into a flag that the loop checks between steps.

  Under `jax.distributed` the handler is left to JAX's preemption service, which makes every
  process stop at the same step (`preemption_sync_point`). A notice that arrives after the last
  step check of a stage (during the last validation) ends the run once the stage is saved.
  """

  def __init__(self):
    self._received = False

  @property
  def raised(self) -> bool:
    return self._received

  def __enter__(self):
    self._previous = None
    if jax.process_count() > 1:
      return self
    self._previous = signal.getsignal(signal.SIGTERM)
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._received = True

  def __exit__(self, exc_type, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    if self._received and exc_type is None:
      raise Preempted('SIGTERM received at the end of a stage, which is saved. Re-run the same '
                      'command to continue.')


def preemption_sync_point(step: int) -> bool:
  """True on every process at the same step once any of them got a preemption notice
  (multi-process runs only; call it at every step)."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.reached_preemption_sync_point(step)


class SummaryWriter:
  """Scalars to TensorBoard (process 0 only)."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()


@dataclasses.dataclass
class Stage:
  """What `fit` needs to know about one training stage."""
  name: str
  directory: str
  log_dir: str
  train_config: ml_collections.ConfigDict
  train_step: Callable   # (state, batch, rng) -> (state, metrics), jitted
  eval_step: Callable    # (variables, batch) -> per-image metrics incl. 'loss', jitted


def _loop_meta(**kwargs) -> dict:
  defaults = dict(epoch=0, batch_in_epoch=0, best_val_loss=None, best_epoch=-1, bad_epochs=0,
                  done=False, history=[])
  defaults.update(kwargs)
  return defaults


def evaluate(eval_step: Callable, variables, batches: Iterator[Batch], mesh: Mesh) -> dict:
  """Means over valid images of every per-image metric of `eval_step`."""
  sums, count = {}, 0.0
  for batch in batches:
    sharded = shard_batch(batch, mesh)
    out, valid = fetch_global((eval_step(variables, sharded), sharded['valid']))
    valid = valid.astype(np.float32)
    for key, value in out.items():
      value = np.nan_to_num(np.asarray(value, np.float64))
      sums[key] = sums.get(key, 0.0) + float(np.sum(value * valid))
    count += float(valid.sum())
  return {key: value / max(count, 1.0) for key, value in sums.items()}


def fit(stage: Stage, state: TrainState, config: ml_collections.ConfigDict, spec, mesh: Mesh,
        rng: jax.Array) -> TrainState:
  """Trains until early stopping or `num_epochs`; resumes from the stage's latest checkpoint.

  Returns the state with the best validation loss. Checkpoints: the latest every
  `checkpoint_every_steps` and at each epoch's end; the best at each improvement.
  """
  tc = stage.train_config
  latest = checkpointing.manager(os.path.join(stage.directory, 'checkpoints'))
  best = checkpointing.manager(os.path.join(stage.directory, 'best'), max_to_keep=1)
  restored = checkpointing.restore_latest(latest, state)
  meta = _loop_meta()
  if restored is not None:
    state, meta, step = restored
    state = replicate(state, mesh)
    logging.info('%s: resuming from step %d (epoch %d, batch %d).', stage.name, step,
                 meta['epoch'] + 1, meta['batch_in_epoch'])
  if meta['done']:
    return _restore_best(best, state, mesh)

  writer = SummaryWriter(stage.log_dir)
  steps_per_epoch = spec.num_examples['train'] // tc.batch_size
  if steps_per_epoch == 0:
    raise errors.UserError(f'{stage.name}: the train split has {spec.num_examples["train"]} examples, '
                     f'fewer than one batch of {tc.batch_size}; lower batch_size.')
  max_steps = tc.get('max_steps', 0) or tc.num_epochs * steps_per_epoch
  block = batch_block(mesh)
  is_main = jax.process_index() == 0

  def save_latest():
    checkpointing.save(latest, int(state.step), state, meta)

  with _SigtermFlag() as sigterm:
    while meta['epoch'] < tc.num_epochs and int(state.step) < max_steps:
      epoch = meta['epoch']
      dataset = pipeline.make_dataset(
          config.data, 'train', tc.batch_size, training=True, seed=config.seed, epoch=epoch,
          skip_batches=meta['batch_in_epoch'], process_index=block,
          process_count=jax.process_count())
      bar = tqdm.tqdm(total=steps_per_epoch, initial=meta['batch_in_epoch'], disable=not is_main,
                      desc=f'{stage.name} epoch {epoch + 1}/{tc.num_epochs}', unit='step',
                      dynamic_ncols=True, mininterval=2.0)
      # The epoch's running train sums live in `meta`, so a resumed epoch reports the same means.
      train_sums, t0 = meta.setdefault('epoch_train_sums', {}), time.time()
      for batch in pipeline.as_numpy(dataset):
        state, step_metrics = stage.train_step(state, shard_batch(batch, mesh), rng)
        meta['batch_in_epoch'] += 1
        step = int(state.step)
        bar.update(1)
        if step % config.log_every_steps == 0 or meta['batch_in_epoch'] == steps_per_epoch:
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          for k, v in values.items():
            train_sums[k] = train_sums.get(k, 0.0) + v
          meta['epoch_train_count'] = meta.get('epoch_train_count', 0) + 1
          bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
          writer.scalars(step, {f'train/{k}': v for k, v in values.items()})
        if sigterm.raised or preemption_sync_point(step):
          save_latest()
          bar.close()
          raise Preempted(f'{stage.name}: SIGTERM received; saved step {step}. Re-run the same '
                          'command to continue.')
        if tc.get('checkpoint_every_steps', 0) and step % tc.checkpoint_every_steps == 0:
          save_latest()
        if step >= max_steps:
          break
      bar.close()

      val = evaluate(stage.eval_step, state.variables(), pipeline.as_numpy(pipeline.make_dataset(
          config.data, 'validation', config.eval.batch_size, training=False, seed=config.seed,
          process_index=block, process_count=jax.process_count())), mesh)
      writer.scalars(int(state.step), {f'val/{k}': v for k, v in val.items()})
      train_means = {k: v / max(meta.get('epoch_train_count', 0), 1)
                     for k, v in train_sums.items()}
      meta['history'].append({'epoch': epoch + 1, 'step': int(state.step),
                              'seconds': round(time.time() - t0, 2),
                              'train': train_means, 'val': val})
      improved = meta['best_val_loss'] is None or val['loss'] < meta['best_val_loss'] - tc.min_delta
      if improved:
        meta.update(best_val_loss=val['loss'], best_epoch=epoch + 1, bad_epochs=0)
        checkpointing.save(best, int(state.step),
                           {'params': state.params, 'batch_stats': state.batch_stats},
                           {'epoch': epoch + 1, 'val': val})
      else:
        meta['bad_epochs'] += 1
      logging.info('%s epoch %d: %s | val %s%s', stage.name, epoch + 1,
                   _fmt(train_means), _fmt(val), ' (best)' if improved else '')
      meta.update(epoch=epoch + 1, batch_in_epoch=0, epoch_train_sums={}, epoch_train_count=0)
      if meta['bad_epochs'] >= tc.patience:
        logging.info('%s: early stopping after %d epochs without improvement of %.4g.',
                     stage.name, meta['bad_epochs'], tc.min_delta)
        break
      save_latest()
    meta['done'] = True
    save_latest()
  return _restore_best(best, state, mesh)


def _fmt(values: Dict[str, float]) -> str:
  return ' '.join(f'{k}={v:.4f}' for k, v in sorted(values.items()))


def _restore_best(best, state: TrainState, mesh: Mesh) -> TrainState:
  restored = checkpointing.restore_latest(
      best, {'params': state.params, 'batch_stats': state.batch_stats})
  if restored is None:
    return state
  variables = replicate(restored[0], mesh)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def stage_history(directory: str) -> list:
  meta = checkpointing.read_meta(os.path.join(directory, 'checkpoints'))
  return meta['history'] if meta else []


# ----------------------------------------------------------------------------------------------
# Stages.


def compute_dtype_kwargs(config) -> dict:
  """`{'dtype': bfloat16}` for `config.compute_dtype='bfloat16'` (parameters stay float32),
  nothing for float32, so models that take no `dtype` keep working."""
  name = config.get('compute_dtype', 'float32')
  if name == 'float32':
    return {}
  if name == 'bfloat16':
    return {'dtype': jnp.bfloat16}
  raise errors.UserError(f"compute_dtype={name!r}; choose 'float32' or 'bfloat16'.")


def build_classifier(config, spec) -> nn.Module:
  return models.classifiers.build(config.classifier.name, len(spec.class_names),
                                  **config.classifier.kwargs, **compute_dtype_kwargs(config))


def build_explainer(config, spec) -> nn.Module:
  return models.build_explainer(config.explainer.name, len(spec.class_names),
                                **config.explainer.kwargs, **compute_dtype_kwargs(config))


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


def classifier_stage(config, spec, workdir: str, mesh: Mesh, rng) -> tuple:
  """Stage 1: returns (classifier module, frozen variables), training it if needed."""
  classifier = build_classifier(config, spec)
  directory = os.path.join(workdir, 'classifier')
  tc = config.classifier.train
  source = config.classifier.get('checkpoint', '')
  # A classifier loaded from a checkpoint is not trained: no trainable/frozen split to make.
  tx = make_optimizer(tc, 'all' if source else config.classifier.get('trainable', 'all'))
  state = replicate(init_state(classifier, tx, rng, config.data.image_size), mesh)
  if source:
    variables = load_classifier_checkpoint(source, state, config, spec)
    checkpointing.save(checkpointing.manager(os.path.join(directory, 'best'), max_to_keep=1), 0,
                       variables, {'source': source if shipped.is_zoo_reference(source)
                                   else os.path.abspath(source)})
    return classifier, replicate(model_variables(**variables), mesh)
  state = with_pretrained_weights(classifier, state, mesh)
  micro_batches = tc.get('grad_accum_steps', 1)
  check_batch_size(tc.batch_size, mesh, 'classifier.train.batch_size', micro_batches)
  stage = Stage(
      name='classifier', directory=directory, train_config=tc,
      log_dir=os.path.join(workdir, 'tensorboard', 'classifier'),
      train_step=jit_train_step(make_classifier_train_step(
          classifier, tx, spec.multilabel, micro_batches, tc.get('object_masking', 0.0),
          tc.get('masking_margin', 3)), mesh),
      eval_step=jit_eval_step(make_classifier_eval_step(classifier, spec.multilabel), mesh))
  state = fit(stage, state, config, spec, mesh, rng)
  return classifier, state.variables()


def load_classifier_checkpoint(source: str, state: TrainState, config, spec) -> dict:
  """Reads classifier variables from a shipped zoo entry ('zoo:NAME'), a workdir (its
  `classifier/best`) or an orbax folder."""
  target = {'params': state.params, 'batch_stats': state.batch_stats}
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_compatible(shipped.read_metadata(name), config, spec.class_names)
    return shipped.load(name, jax.device_get(target))
  restored = restore_stage_variables(source, 'classifier', target)
  if restored is not None:
    return restored
  raise errors.UserError(
      f'classifier.checkpoint={source!r} holds no readable classifier checkpoint. Give a '
      'wysiwyc workdir whose classifier stage finished, or an orbax checkpoint folder whose '
      "steps hold {'params', 'batch_stats'} for config.classifier.")


def restore_stage_variables(source: str, stage: str, target: dict) -> Optional[dict]:
  """The {'params', 'batch_stats'} of a workdir's `<stage>/best`, or of an orbax folder, read
  into the structure of `target`; None when neither holds a readable checkpoint of it."""
  for directory in (os.path.join(source, stage, 'best'), source):
    if os.path.isdir(directory):
      restored = checkpointing.restore_latest(checkpointing.manager(directory, 1), target)
      if restored is not None:
        return restored[0]
  return None


def with_initial_explainer(config, spec, state: TrainState, mesh: Mesh) -> TrainState:
  """`state` started from the explainer variables named by `config.explainer.init_from`: a
  shipped zoo entry ('zoo:NAME'), a workdir (its `explainer/best`) or an orbax folder;
  unchanged when it is ''."""
  source = config.explainer.get('init_from', '')
  if not source:
    return state
  target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_explainer_compatible(shipped.read_metadata(name), config, spec.class_names)
    return replicate(state.replace(**shipped.load(name, target)), mesh)
  restored = restore_stage_variables(source, 'explainer', target)
  if restored is None:
    raise errors.UserError(
        f'explainer.init_from={source!r} holds no explainer checkpoint that fits this config. '
        'Give a wysiwyc workdir (or an orbax folder) made with the same explainer.name and '
        'explainer.kwargs, or leave explainer.init_from empty to start from random weights.')
  return replicate(state.replace(**restored), mesh)


def explainer_stage(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                    rng) -> tuple:
  """Stage 2: trains the explainer against the frozen classifier."""
  explainer = build_explainer(config, spec)
  tc = config.explainer.train
  micro_batches = tc.get('grad_accum_steps', 1)
  check_batch_size(tc.batch_size, mesh, 'explainer.train.batch_size', micro_batches)
  tx = make_optimizer(tc)
  state = replicate(init_state(explainer, tx, rng, config.data.image_size), mesh)
  state = with_pretrained_weights(explainer, state, mesh)
  state = with_initial_explainer(config, spec, state, mesh)
  loss_fn = explainer_loss_fn(config, spec.multilabel)
  train_step = jit_train_step(make_explainer_train_step(explainer, classifier, tx, loss_fn,
                                                        micro_batches),
                              mesh, num_replicated_args=1)
  eval_step = jit_eval_step(make_explainer_eval_step(explainer, classifier, loss_fn), mesh, 2)
  stage = Stage(
      name='explainer', directory=os.path.join(workdir, 'explainer'), train_config=tc,
      log_dir=os.path.join(workdir, 'tensorboard', 'explainer'),
      train_step=lambda s, b, r: train_step(s, classifier_variables, b, r),
      eval_step=lambda v, b: eval_step(v, classifier_variables, b))
  state = fit(stage, state, config, spec, mesh, rng)
  return explainer, state.variables()


# ----------------------------------------------------------------------------------------------
# Entry point.

# Config fields that change the shape or meaning of checkpoints: a workdir made with other values
# cannot be resumed.
_FROZEN_FIELDS = ('mode', 'data', 'classifier.name', 'classifier.kwargs', 'explainer.name',
                  'explainer.kwargs', 'loss.kind')


def _lookup(config_dict: dict, dotted: str):
  for key in dotted.split('.'):
    config_dict = config_dict.get(key, {}) if isinstance(config_dict, dict) else {}
  return config_dict


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints were made for another model or data set."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  current = json.loads(config.to_json_best_effort())
  changed = [field for field in _FROZEN_FIELDS
             if _lookup(previous, field) != _lookup(current, field)]
  if changed:
    raise errors.UserError(f'{workdir} was made with a different {", ".join(changed)}; its '
                     'checkpoints do not fit this config. Use a new --workdir (or restore the '
                     'previous values).')


def prepare_data(data_config) -> pipeline.DataSpec:
  """`pipeline.prepare`, by process 0 first: processes that share a data_dir never build the
  data set at the same time (with separate data_dirs, the others build theirs afterwards)."""
  if jax.process_count() == 1:
    return pipeline.prepare(data_config)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  spec = pipeline.prepare(data_config) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('wysiwyc: data prepared by process 0')
  return spec or pipeline.prepare(data_config)


def write_workdir_description(config, spec, workdir: str) -> None:
  if jax.process_index() != 0:
    return
  checkpointing.write_text_atomic(os.path.join(workdir, 'config.json'),
                                  config.to_json_best_effort(indent=2, sort_keys=True))
  checkpointing.write_json_atomic(os.path.join(workdir, 'spec.json'), spec_to_json(spec))


def spec_to_json(spec) -> dict:
  return {'name': spec.name, 'class_names': list(spec.class_names),
          'image_size': spec.image_size, 'multilabel': spec.multilabel,
          'num_examples': dict(spec.num_examples)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage (classifier, explainer, evaluation, figures) into `workdir`.

  Finished stages are reused; an interrupted stage continues from its latest checkpoint.
  Returns the results dict also written to `workdir/results.json`.
  """
  from wysiwyc import evaluation  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  checkpointing.check_directory(workdir)
  check_workdir_config(config, workdir)
  config = config.copy_and_resolve_references()
  check_inputs_available(config)  # missing data or weights: stop before writing anything
  os.makedirs(workdir, exist_ok=True)
  mesh = create_mesh()
  logging.info('Devices: %d (%s) in %d process(es).', jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  spec = prepare_data(config.data)
  write_workdir_description(config, spec, workdir)
  rng = jax.random.key(config.seed)
  mode = config.get('mode', 'explainer')
  if mode == 'self_explainer':  # One network classifies and explains (wysiwyc/self_explainer.py).
    from wysiwyc import self_explainer  # pylint: disable=g-import-not-at-top
    return evaluation.evaluate_and_report(config, spec, workdir, mesh,
                                          *self_explainer.self_explainer_stage(
                                              config, spec, workdir, mesh,
                                              jax.random.fold_in(rng, 2)))
  if mode != 'explainer':
    raise errors.UserError(f"Unknown mode {mode!r}; choose 'explainer' or 'self_explainer'.")
  classifier, classifier_variables = classifier_stage(config, spec, workdir, mesh,
                                                      jax.random.fold_in(rng, 1))
  explainer, explainer_variables = explainer_stage(config, spec, workdir, mesh, classifier,
                                                   classifier_variables,
                                                   jax.random.fold_in(rng, 2))
  return evaluation.evaluate_and_report(config, spec, workdir, mesh, classifier,
                                        classifier_variables, explainer, explainer_variables)
