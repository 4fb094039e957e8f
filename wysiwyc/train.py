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
from wysiwyc.data import pipeline

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


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size % devices or batch_size % processes:
    raise errors.UserError(f'{what} = {batch_size} does not divide over {devices} devices in '
                     f'{processes} processes; set it to a multiple of {devices}.')


def shard_batch(batch: Batch, mesh: Mesh) -> Dict[str, jax.Array]:
  """Assembles per-process numpy batches into global arrays sharded along `data`."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def local_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (the paper's optimizer), with optional global-norm clipping."""
  chain = []
  if train_config.get('grad_clip', 0.0):
    chain.append(optax.clip_by_global_norm(train_config.grad_clip))
  chain.append(optax.adam(train_config.learning_rate))
  return optax.chain(*chain)


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


def make_classifier_train_step(model: nn.Module, tx, multilabel: bool) -> Callable:
  def step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits, batch_stats = apply_model(model, params, state.batch_stats, batch['image'],
                                        train=True, rng=rng)
      return classifier_loss(logits, batch['labels'], multilabel), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    return state, {'loss': loss, 'accuracy': per_class_accuracy(logits, batch['labels'],
                                                                multilabel).mean()}
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
                              loss_fn: Callable) -> Callable:
  def step(state: TrainState, classifier_variables, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    classify = lambda images: classifier.apply(classifier_variables, images, train=False)

    def objective(params):
      segmentations, batch_stats = apply_model(explainer, params, state.batch_stats,
                                               batch['image'], train=True, rng=rng)
      loss, aux = loss_fn(segmentations, batch['image'], batch['labels'], classify)
      return loss, (aux, batch_stats)

    (_, (aux, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
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
  """Turns SIGTERM (a preemption notice) into a flag that the loop checks between steps."""

  def __init__(self):
    self.raised = False

  def __enter__(self):
    self._previous = signal.getsignal(signal.SIGTERM)
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
    valid = batch['valid'].astype(np.float32)
    out = jax.device_get(eval_step(variables, shard_batch(batch, mesh)))
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
  local_bs = local_batch_size(tc.batch_size)
  is_main = jax.process_index() == 0

  def save_latest():
    checkpointing.save(latest, int(state.step), state, meta)

  with _SigtermFlag() as sigterm:
    while meta['epoch'] < tc.num_epochs and int(state.step) < max_steps:
      epoch = meta['epoch']
      dataset = pipeline.make_dataset(
          config.data, 'train', local_bs, training=True, seed=config.seed, epoch=epoch,
          skip_batches=meta['batch_in_epoch'], process_index=jax.process_index(),
          process_count=jax.process_count())
      bar = tqdm.tqdm(total=steps_per_epoch, initial=meta['batch_in_epoch'], disable=not is_main,
                      desc=f'{stage.name} epoch {epoch + 1}/{tc.num_epochs}', unit='step',
                      dynamic_ncols=True, mininterval=2.0)
      train_sums, train_count, t0 = {}, 0, time.time()
      for batch in pipeline.as_numpy(dataset):
        state, step_metrics = stage.train_step(state, shard_batch(batch, mesh), rng)
        meta['batch_in_epoch'] += 1
        step = int(state.step)
        bar.update(1)
        if step % config.log_every_steps == 0 or meta['batch_in_epoch'] == steps_per_epoch:
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          for k, v in values.items():
            train_sums[k] = train_sums.get(k, 0.0) + v
          train_count += 1
          bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
          writer.scalars(step, {f'train/{k}': v for k, v in values.items()})
        if sigterm.raised:
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
          config.data, 'validation', local_batch_size(config.eval.batch_size), training=False,
          seed=config.seed, process_index=jax.process_index(),
          process_count=jax.process_count())), mesh)
      writer.scalars(int(state.step), {f'val/{k}': v for k, v in val.items()})
      train_means = {k: v / max(train_count, 1) for k, v in train_sums.items()}
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
      meta.update(epoch=epoch + 1, batch_in_epoch=0)
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


def build_classifier(config, spec) -> nn.Module:
  return models.classifiers.build(config.classifier.name, len(spec.class_names),
                                  **config.classifier.kwargs)


def build_explainer(config, spec) -> nn.Module:
  return models.build_explainer(config.explainer.name, len(spec.class_names),
                                **config.explainer.kwargs)


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
  tx = make_optimizer(tc)
  state = replicate(init_state(classifier, tx, rng, config.data.image_size), mesh)
  source = config.classifier.get('checkpoint', '')
  if source:
    variables = load_classifier_checkpoint(source, state)
    checkpointing.save(checkpointing.manager(os.path.join(directory, 'best'), max_to_keep=1), 0,
                       variables, {'source': os.path.abspath(source)})
    return classifier, replicate(model_variables(**variables), mesh)
  check_batch_size(tc.batch_size, mesh, 'classifier.train.batch_size')
  stage = Stage(
      name='classifier', directory=directory, train_config=tc,
      log_dir=os.path.join(workdir, 'tensorboard', 'classifier'),
      train_step=jit_train_step(make_classifier_train_step(classifier, tx, spec.multilabel), mesh),
      eval_step=jit_eval_step(make_classifier_eval_step(classifier, spec.multilabel), mesh))
  state = fit(stage, state, config, spec, mesh, rng)
  return classifier, state.variables()


def load_classifier_checkpoint(source: str, state: TrainState) -> dict:
  """Reads classifier variables from a workdir (its `classifier/best`) or an orbax folder."""
  candidates = [os.path.join(source, 'classifier', 'best'), source]
  target = {'params': state.params, 'batch_stats': state.batch_stats}
  for directory in candidates:
    if os.path.isdir(directory):
      restored = checkpointing.restore_latest(checkpointing.manager(directory, 1), target)
      if restored is not None:
        return restored[0]
  raise errors.UserError(
      f'classifier.checkpoint={source!r} holds no readable classifier checkpoint. Give a '
      'wysiwyc workdir whose classifier stage finished, or an orbax checkpoint folder whose '
      "steps hold {'params', 'batch_stats'} for config.classifier.")


def explainer_stage(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                    rng) -> tuple:
  """Stage 2: trains the explainer against the frozen classifier."""
  explainer = build_explainer(config, spec)
  tc = config.explainer.train
  check_batch_size(tc.batch_size, mesh, 'explainer.train.batch_size')
  tx = make_optimizer(tc)
  state = replicate(init_state(explainer, tx, rng, config.data.image_size), mesh)
  loss_fn = explainer_loss_fn(config, spec.multilabel)
  train_step = jit_train_step(make_explainer_train_step(explainer, classifier, tx, loss_fn), mesh,
                              num_replicated_args=1)
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
_FROZEN_FIELDS = ('data', 'classifier.name', 'classifier.kwargs', 'explainer.name',
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
  os.makedirs(workdir, exist_ok=True)
  check_workdir_config(config, workdir)
  config = config.copy_and_resolve_references()
  mesh = create_mesh()
  logging.info('Devices: %d (%s) in %d process(es).', jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  spec = pipeline.prepare(config.data)
  write_workdir_description(config, spec, workdir)
  rng = jax.random.key(config.seed)
  classifier, classifier_variables = classifier_stage(config, spec, workdir, mesh,
                                                      jax.random.fold_in(rng, 1))
  explainer, explainer_variables = explainer_stage(config, spec, workdir, mesh, classifier,
                                                   classifier_variables,
                                                   jax.random.fold_in(rng, 2))
  return evaluation.evaluate_and_report(config, spec, workdir, mesh, classifier,
                                        classifier_variables, explainer, explainer_variables)
