"""`fit`, the training loop every stage shares: epochs over the train split, validation, the
best checkpoint, early stopping, resuming, preemption, TensorBoard summaries, the progress bar.
"""

import dataclasses
import os
import signal
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

from absl import logging
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np

from wysiwyc import checkpointing
from wysiwyc import console
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import train_steps
from wysiwyc.data import pipeline


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
  start: str = 'random weights'  # what the weights start from, for the console


def _loop_meta(**kwargs) -> dict:
  defaults = dict(epoch=0, batch_in_epoch=0, best_val_loss=None, best_epoch=-1, bad_epochs=0,
                  done=False, history=[])
  defaults.update(kwargs)
  return defaults


# Validation metrics scored against the ground-truth masks: left out of a stage's history when
# the validation split has none (the checkpoints are chosen on the loss, which needs no masks).
MASK_METRICS = ('iou@0.5',)


def evaluate(eval_step: Callable, variables, batches: Iterator[data_parallel.Batch],
             mesh: Mesh) -> dict:
  """Means over valid images of every per-image metric of `eval_step`."""
  sums, count = {}, 0.0
  for batch in batches:
    sharded = data_parallel.shard_batch(batch, mesh)
    out, valid = data_parallel.fetch_global((eval_step(variables, sharded), sharded['valid']))
    valid = valid.astype(np.float32)
    for key, value in out.items():
      value = np.nan_to_num(np.asarray(value, np.float64))
      sums[key] = sums.get(key, 0.0) + float(np.sum(value * valid))
    count += float(valid.sum())
  return {key: value / max(count, 1.0) for key, value in sums.items()}


def fit(stage: Stage, state: train_steps.TrainState, config: ml_collections.ConfigDict, spec,
        mesh: Mesh, rng: jax.Array) -> train_steps.TrainState:
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
    state = data_parallel.replicate(state, mesh)
  if meta['done']:
    console.say(console.reused_stage_line(stage.name))
    return _restore_best(best, state, mesh)

  writer = SummaryWriter(stage.log_dir)
  steps_per_epoch = spec.num_examples['train'] // tc.batch_size
  if steps_per_epoch == 0:
    field = {'distill': 'explainer.distill'}.get(stage.name, f'{stage.name}.train'.replace(
        'self_explainer', 'explainer'))
    raise errors.UserError(f'{stage.name}: the train split has {spec.num_examples["train"]} '
                           f'examples, fewer than one batch of {tc.batch_size}; lower '
                           f'--config.{field}.batch_size.')
  max_steps = tc.get('max_steps', 0) or tc.num_epochs * steps_per_epoch
  block = data_parallel.batch_block(mesh)
  console.say(console.trained_stage_line(
      stage.name, stage.start,
      console.step_budget(tc.get('max_steps', 0), tc.num_epochs, steps_per_epoch, tc.patience)))
  if restored is not None:
    console.say(console.resumed_stage_line(stage.name, step, meta['epoch'] + 1,
                                           meta['batch_in_epoch']))
  bar = console.progress_bar(stage.name, min(max_steps, tc.num_epochs * steps_per_epoch),
                             int(state.step))

  def save_latest():
    checkpointing.save(latest, int(state.step), state, meta)

  with _SigtermFlag() as sigterm:
    while meta['epoch'] < tc.num_epochs and int(state.step) < max_steps:
      epoch = meta['epoch']
      dataset = pipeline.make_dataset(
          config.data, 'train', tc.batch_size, training=True, seed=config.seed, epoch=epoch,
          skip_batches=meta['batch_in_epoch'], process_index=block,
          process_count=jax.process_count())
      # The epoch's running train sums live in `meta`, so a resumed epoch reports the same means.
      train_sums, t0 = meta.setdefault('epoch_train_sums', {}), time.time()
      for batch in pipeline.as_numpy(dataset):
        state, step_metrics = stage.train_step(state, data_parallel.shard_batch(batch, mesh), rng)
        meta['batch_in_epoch'] += 1
        step = int(state.step)
        bar.update(1)
        if step % config.log_every_steps == 0 or meta['batch_in_epoch'] == steps_per_epoch:
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          for k, v in values.items():
            train_sums[k] = train_sums.get(k, 0.0) + v
          meta['epoch_train_count'] = meta.get('epoch_train_count', 0) + 1
          bar.set_postfix(epoch=epoch + 1, loss=f"{values.get('loss', float('nan')):.4f}")
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

      val = evaluate(stage.eval_step, state.variables(), pipeline.as_numpy(pipeline.make_dataset(
          config.data, 'validation', config.eval.batch_size, training=False, seed=config.seed,
          process_index=block, process_count=jax.process_count())), mesh)
      if 'validation' in spec.unmasked_splits:  # no masks: no IoU against an empty foreground
        val = {k: v for k, v in val.items() if k not in MASK_METRICS}
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
      console.say(console.epoch_line(stage.name, epoch + 1, int(state.step), train_means, val,
                                     improved))
      logging.debug('%s epoch %d: %s | val %s', stage.name, epoch + 1, _fmt(train_means),
                    _fmt(val))
      meta.update(epoch=epoch + 1, batch_in_epoch=0, epoch_train_sums={}, epoch_train_count=0)
      if meta['bad_epochs'] >= tc.patience:
        break
      save_latest()
    bar.close()
    meta['done'] = True
    save_latest()
  console.say(console.stage_end_line(
      stage.name, end_reason(meta, int(state.step), tc), int(state.step), meta['epoch'],
      meta['best_epoch'], meta['best_val_loss'], tc.patience))
  return _restore_best(best, state, mesh)


def end_reason(meta: dict, step: int, train_config: ml_collections.ConfigDict) -> str:
  """Why a finished stage stopped: 'early_stopping', 'budget' (its `max_steps`) or 'epochs'."""
  if meta['bad_epochs'] >= train_config.patience:
    return 'early_stopping'
  if train_config.get('max_steps', 0) and step >= train_config.max_steps:
    return 'budget'
  return 'epochs'


def _fmt(values: Dict[str, float]) -> str:
  return ' '.join(f'{k}={v:.4f}' for k, v in sorted(values.items()))


def _restore_best(best, state: train_steps.TrainState, mesh: Mesh) -> train_steps.TrainState:
  restored = checkpointing.restore_latest(
      best, {'params': state.params, 'batch_stats': state.batch_stats})
  if restored is None:
    return state
  variables = data_parallel.replicate(restored[0], mesh)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def stage_history(directory: str) -> list:
  meta = checkpointing.read_meta(os.path.join(directory, 'checkpoints'))
  return meta['history'] if meta else []


def stage_record(directory: str) -> Tuple[list, Optional[int]]:
  """(history, the epoch of the best checkpoint that `fit` kept, which `min_delta` decides; None
  when none is known) of the stage in `directory`."""
  meta = checkpointing.read_meta(os.path.join(directory, 'checkpoints'))
  if not meta:
    return [], None
  best_epoch = meta.get('best_epoch', -1)
  return meta['history'], best_epoch if best_epoch > 0 else None
