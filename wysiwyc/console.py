"""What the main job tells its user on the console: what each stage uses, its progress in steps,
why it ended, and where the results are. Process 0 only; written through tqdm, so lines and
progress bars do not break each other. When the console is not a terminal (output redirected to
a file), progress comes as plain lines instead of bars.
"""

import os
import shutil
import sys
import time
from typing import Dict, Optional

import jax
import tqdm

SMOKE_LINE = ('smoke run: tiny data, models and step counts, to check that every stage runs; '
              'its numbers are not meaningful.')


def say(line: str) -> None:
  """Prints `line` to stderr (on process 0), above any progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(line, file=sys.stderr)


def is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # A replaced or closed stream.
    return False


class PlainProgress:
  """A stage's progress as plain lines, for a console that is not a terminal: a line when the
  stage passes another tenth of its steps, unless one was written in the last `min_seconds`, and
  the last step's line at `close`, e.g. `explainer 750/750 steps [03:20, epoch=5, loss=0.0942]`.
  The calls tqdm's bar takes in `loop.fit`."""

  def __init__(self, stage: str, total_steps: int, done_steps: int, min_seconds: float = 30.0,
               file=None):
    self.stage, self.total, self.n, self.min_seconds = stage, total_steps, done_steps, min_seconds
    self.file = file
    self._start, self._start_n = time.monotonic(), done_steps
    self._written_n, self._written_at = done_steps, None
    self._postfix = {}

  def _tenth(self, n: int) -> int:
    return n * 10 // max(self.total, 1)

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.monotonic()
    if (self._tenth(self.n) > self._tenth(self._written_n) and self.n < self.total
        and (self._written_at is None or now - self._written_at >= self.min_seconds)):
      self._write(now)

  def set_postfix(self, **postfix) -> None:
    self._postfix = postfix

  def close(self) -> None:
    if self.n != self._written_n:
      self._write(time.monotonic())

  def line(self, now: float) -> str:
    elapsed = now - self._start
    done = self.n - self._start_n
    times = _clock(elapsed)
    if 0 < done and self.n < self.total:
      times += f'<{_clock(elapsed / done * (self.total - self.n))}'
    extra = ''.join(f', {key}={value}' for key, value in self._postfix.items())
    return f'{self.stage} {self.n}/{self.total} steps [{times}{extra}]'

  def _write(self, now: float) -> None:
    self._written_n, self._written_at = self.n, now
    print(self.line(now), file=self.file or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes:02d}:{seconds:02d}'


def progress_bar(stage: str, total_steps: int, done_steps: int):
  """The stage's bar in optimizer steps, e.g. `explainer 120/750 steps |###  | [00:40<03:20]`;
  plain lines (`PlainProgress`) when stderr is not a terminal."""
  if jax.process_index() == 0 and not is_terminal(sys.stderr):
    return PlainProgress(stage, total_steps, done_steps)
  return tqdm.tqdm(total=total_steps, initial=done_steps, desc=stage, unit='step',
                   bar_format='{desc} {n_fmt}/{total_fmt} steps |{bar}| '
                              '[{elapsed}<{remaining}{postfix}]',
                   disable=jax.process_index() != 0, dynamic_ncols=True, mininterval=2.0,
                   file=sys.stderr)


def step_budget(max_steps: int, num_epochs: int, steps_per_epoch: int, patience: int) -> str:
  """How long a stage may train, e.g. '750 steps' or 'up to 1870 steps (10 epochs of 187)'."""
  if max_steps and max_steps <= num_epochs * steps_per_epoch:
    budget = f'{max_steps} steps'
  else:
    budget = (f'up to {num_epochs * steps_per_epoch} steps ({num_epochs} epochs of '
              f'{steps_per_epoch})')
  if patience < num_epochs:
    budget += f', early stopping after {patience} epochs without improvement'
  return budget


def shipped_classifier_line(reference: str, test_accuracy: Optional[float]) -> str:
  accuracy = f' (test accuracy {test_accuracy:.3f})' if test_accuracy is not None else ''
  return f'classifier: shipped {reference}{accuracy}, not trained'


def loaded_classifier_line(path: str) -> str:
  return f'classifier: loaded from {path}, not trained'


def trained_stage_line(stage: str, start: str, budget: str) -> str:
  """E.g. 'explainer: starts from shipped zoo:synthetic_shapes_unet, 750 steps'."""
  return f'{stage}: starts from {start}, {budget}'


def resumed_stage_line(stage: str, step: int, epoch: int, batch: int) -> str:
  return f'{stage}: resuming from step {step} (epoch {epoch}, batch {batch}).'


def reused_stage_line(stage: str) -> str:
  return f'{stage}: finished in this workdir earlier; its best checkpoint is used'


def epoch_line(stage: str, epoch: int, step: int, train: Dict[str, float],
               val: Dict[str, float], best: bool) -> str:
  """One epoch's summary: the train loss (when a step of the epoch was logged: a step budget may
  end an epoch after a few steps) and the main validation numbers."""
  shown = ', '.join(f'{key} {val[key]:.4f}' for key in ('loss', 'iou@0.5', 'accuracy')
                    if key in val)
  trained = f"train loss {train['loss']:.4f} | " if 'loss' in train else ''
  return (f"{stage} epoch {epoch} (step {step}): {trained}validation {shown}"
          f"{' (best so far)' if best else ''}")


def stage_end_line(stage: str, reason: str, step: int, epoch: int, best_epoch: int,
                   best_val_loss: Optional[float], patience: int = 0) -> str:
  """Why a stage stopped training: reason 'budget' (its step budget), 'early_stopping' or
  'epochs' (all its epochs)."""
  if reason == 'budget':
    why = f'step budget reached at step {step} (epoch {epoch})'
  elif reason == 'early_stopping':
    why = (f'early stopping at step {step} (epoch {epoch}): no improvement of the validation '
           f'loss for {patience} epochs')
  elif reason == 'epochs':
    why = f'all {epoch} epochs done at step {step}'
  else:
    raise ValueError(f"Unknown reason {reason!r}; choose 'budget', 'early_stopping' or 'epochs'.")
  best = '' if best_val_loss is None else (f'; best validation loss {best_val_loss:.4f} '
                                           f'(epoch {best_epoch}) kept')
  return f'{stage}: {why}{best}'


def data_line(spec, location: str, built: bool) -> str:
  """E.g. 'data: synthetic_shapes prepared in DIR (train 64, validation 16, test 16 images)'."""
  counts = ', '.join(f'{split} {count}' for split, count in spec.num_examples.items())
  return (f"data: {spec.name} {'prepared in' if built else 'found in'} {location} "
          f'({counts} images)')


def results_summary(results: dict) -> str:
  """The main numbers of results.json in one line."""
  explainer, parts = results.get('explainer', {}), []
  if 'iou@0.5' in explainer:
    parts.append(f"explainer iou@0.5 {explainer['iou@0.5']:.3f} (all_1 "
                 f"{results.get('all_1', {}).get('iou@0.5', float('nan')):.3f}), per-class "
                 f"{explainer['per_class_iou@0.5']:.3f}")
  if explainer.get('specificity_other_over_own') is not None:
    parts.append(f"other/own {explainer['specificity_other_over_own']:.3f}")
  elif explainer.get('specificity_runner_up_over_own') is not None:
    parts.append(f"runner-up/own {explainer['specificity_runner_up_over_own']:.3f}")
  classifier = results.get('classifier', {})
  if 'accuracy_plain' in classifier:
    parts.append(f"classifier accuracy {classifier['accuracy_plain']:.3f}")
  images = classifier.get('num_test_images')
  return (f'results on {images} test images: ' if images else 'results: ') + (
      ', '.join(parts) or 'no numbers (see the note above)')


def tensorboard_command() -> str:
  """A command that starts TensorBoard from the current folder: `tensorboard` when it is on the
  PATH, else the one installed beside this Python (`.venv/bin/tensorboard` after the README's
  set-up), else `PYTHON -m tensorboard.main`."""
  if shutil.which('tensorboard'):
    return 'tensorboard'
  beside = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  if os.path.exists(beside):
    relative = os.path.relpath(beside)
    return beside if relative.startswith('..') else os.path.join(os.curdir, relative) if (
        os.sep not in relative) else relative
  return f'{sys.executable} -m tensorboard.main'


def results_line(workdir: str) -> str:
  return (f'results: {os.path.join(workdir, "results.md")} (and results.json); figures: '
          f'{os.path.join(workdir, "figures")}{os.sep}; TensorBoard: {tensorboard_command()} '
          f'--logdir {os.path.join(workdir, "tensorboard")}')
