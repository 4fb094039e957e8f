"""What the main job tells its user on the console: what each stage uses, its progress in steps,
why it ended, and where the results are. Process 0 only; written through tqdm, so lines and
progress bars do not break each other.
"""

import os
import sys
from typing import Dict, Optional

import jax
import tqdm


def say(line: str) -> None:
  """Prints `line` to stderr (on process 0), above any progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(line, file=sys.stderr)


def progress_bar(stage: str, total_steps: int, done_steps: int) -> tqdm.tqdm:
  """The stage's bar in optimizer steps, e.g. `explainer 120/750 steps |###  | [00:40<03:20]`."""
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


def results_line(workdir: str) -> str:
  return (f'results: {os.path.join(workdir, "results.md")} (and results.json); figures: '
          f'{os.path.join(workdir, "figures")}{os.sep}; TensorBoard: tensorboard --logdir '
          f'{os.path.join(workdir, "tensorboard")}')
