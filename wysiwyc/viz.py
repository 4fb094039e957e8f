"""Figures: per-class masks (like the paper's Figure 1) and learning curves."""

import os
from typing import Dict, List, Optional, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import matplotlib.ticker  # pylint: disable=g-import-not-at-top
import numpy as np

MASK_COLOR = np.array([1.0, 0.1, 0.1])
# A class is "predicted" when the classifier's probability exceeds this (figures, explain's JSON).
PREDICTED_THRESHOLD = 0.5


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """Blends red into `image` (H,W,3 uint8) where `mask` (H,W in [0,1]) is high; float RGB."""
  base = image.astype(np.float32) / 255.0
  gray = base.mean(-1, keepdims=True) * 0.6 + 0.2
  weight = alpha * np.clip(mask, 0, 1)[..., None]
  return np.clip((1 - weight) * gray + weight * MASK_COLOR, 0, 1)


def class_palette(num_classes: int) -> np.ndarray:
  """(C,3) RGB colours of the classes in ground-truth panels."""
  return plt.get_cmap('tab10' if num_classes <= 10 else 'tab20')(
      np.arange(num_classes) % 20)[:, :3]


def label_map_rgb(class_masks: np.ndarray) -> np.ndarray:
  """Colours each class of (H,W,C) ground-truth masks; background black."""
  return np.clip(class_masks.astype(np.float32) @ class_palette(class_masks.shape[-1]), 0, 1)


def plot_class_masks(image: np.ndarray, masks: np.ndarray, class_masks: Optional[np.ndarray],
                     labels: Optional[np.ndarray], probabilities: np.ndarray,
                     class_names: Sequence[str], threshold: float = PREDICTED_THRESHOLD,
                     multilabel: bool = True) -> plt.Figure:
  """Images in rows; columns: image, ground truth (when `class_masks` is given), then each
  class's mask over the image.

  Under each mask: the classifier's probability of the class, `p=`, in bold when the class is
  predicted (p > threshold for a multi-label classifier; the most probable class for a
  single-label one, `multilabel=False`). With `labels`, the masks of the classes in the image's ground truth
  are framed in the class's ground-truth colour. A caption says so; a legend names the colours.
  """
  n, num_classes = masks.shape[0], masks.shape[-1]
  lead = ['image'] + (['ground truth'] if class_masks is not None else [])
  cols = len(lead) + num_classes
  fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.8 * n + 0.6), squeeze=False,
                           layout='constrained')
  palette = class_palette(num_classes)
  for row in range(n):
    axes[row, 0].imshow(image[row])
    if class_masks is not None:
      axes[row, 1].imshow(label_map_rgb(class_masks[row]))
    for c in range(num_classes):
      ax = axes[row, len(lead) + c]
      ax.imshow(overlay(image[row], masks[row, :, :, c]))
      predicted = (probabilities[row, c] > threshold if multilabel
                   else c == int(np.argmax(probabilities[row])))
      ax.set_xlabel(f'p={probabilities[row, c]:.2f}', fontsize=7,
                    fontweight='bold' if predicted else 'normal')
      if labels is not None and labels[row, c] > 0.5:
        for spine in ax.spines.values():
          spine.set_edgecolor(palette[c])
          spine.set_linewidth(3)
    for ax in axes[row]:
      ax.set_xticks([])
      ax.set_yticks([])
  for ax, title in zip(axes[0], lead + list(class_names)):
    ax.set_title(title, fontsize=8)
  rule = f'p > {threshold:g}' if multilabel else 'the most probable class'
  caption = (f"p: the classifier's probability of the class; bold: predicted ({rule}). "
             'Red: the class\'s mask.')
  if labels is not None:
    caption += ' Framed: the class is in the ground truth.'
  fig.supxlabel(caption, fontsize=7, wrap=True)
  if class_masks is not None:
    handles = [matplotlib.patches.Patch(color=palette[c], label=name)
               for c, name in enumerate(class_names)]
    fig.legend(handles=handles, loc='outside right upper',
               fontsize=7, frameon=False, title='ground truth', title_fontsize=7)
  return fig


def plot_training_curves(histories: Dict[str, List[dict]],
                         best_epochs: Optional[Dict[str, int]] = None) -> plt.Figure:
  """One panel per stage: train and validation loss over the training steps (one point per
  epoch), the validation IoU or accuracy if logged, and the best checkpoint: the epoch of
  `best_epochs[stage]` (the one the training loop kept, which its `min_delta` decides), else
  the one with the lowest validation loss. Steps are ticked at integers only."""
  stages = [s for s, h in histories.items() if h] or list(histories)[:1]
  fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(5 * max(len(stages), 1), 3.5),
                           squeeze=False)
  for ax, stage in zip(axes[0], stages):
    history = histories.get(stage) or []
    steps = [h['step'] for h in history]
    ax.plot(steps, [h['train'].get('loss', np.nan) for h in history], 'o-', label='train loss')
    ax.plot(steps, [h['val'].get('loss', np.nan) for h in history], 's-', label='val loss')
    best = _best_entry(history, (best_epochs or {}).get(stage))
    if best is not None:
      ax.axvline(best['step'], color='0.4', linestyle=':',
                 label=f"best checkpoint (step {best['step']})")
    ax.set_xlabel('training step')
    ax.set_ylabel('loss')
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if steps and max(steps) - min(steps) < 5:  # a short run: the locator would tick fractions
      ax.set_xticks(sorted(set(steps)))
      ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
    ax.set_title(stage)
    secondary = [k for k in ('iou@0.5', 'accuracy') if history and k in history[0]['val']]
    if secondary:
      twin = ax.twinx()
      key = secondary[0]
      twin.plot(steps, [h['val'][key] for h in history], 'g^--', label=f'val {key}')
      twin.set_ylim(0, 1)
      twin.set_ylabel(f'val {key}')
      twin.legend(loc='upper right', fontsize=7)
    ax.legend(loc='upper left', fontsize=7)
  fig.tight_layout()
  return fig


def _best_entry(history: List[dict], best_epoch: Optional[int]) -> Optional[dict]:
  if best_epoch is not None:
    return next((h for h in history if h.get('epoch') == best_epoch), None)
  losses = [h['val'].get('loss', np.nan) for h in history]
  if not history or np.all(np.isnan(losses)):
    return None
  return history[int(np.nanargmin(losses))]


def save_figure(fig: plt.Figure, path: str, dpi: int = 110) -> None:
  """Saves through a temporary file and a rename, then closes the figure."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp-{os.getpid()}{ext}'
  fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  os.replace(tmp, path)
