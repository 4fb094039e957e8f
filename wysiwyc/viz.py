"""Figures: per-class masks (like the paper's Figure 1) and learning curves."""

import os
from typing import Dict, List, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

MASK_COLOR = np.array([1.0, 0.1, 0.1])


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """Blends red into `image` (H,W,3 uint8) where `mask` (H,W in [0,1]) is high; float RGB."""
  base = image.astype(np.float32) / 255.0
  gray = base.mean(-1, keepdims=True) * 0.6 + 0.2
  weight = alpha * np.clip(mask, 0, 1)[..., None]
  return np.clip((1 - weight) * gray + weight * MASK_COLOR, 0, 1)


def label_map_rgb(class_masks: np.ndarray) -> np.ndarray:
  """Colours each class of (H,W,C) ground-truth masks; background black."""
  num_classes = class_masks.shape[-1]
  palette = plt.get_cmap('tab10' if num_classes <= 10 else 'tab20')(
      np.arange(num_classes) % 20)[:, :3]
  return np.clip(class_masks.astype(np.float32) @ palette, 0, 1)


def plot_class_masks(image: np.ndarray, masks: np.ndarray, class_masks: np.ndarray,
                     labels: np.ndarray, probabilities: np.ndarray,
                     class_names: Sequence[str]) -> plt.Figure:
  """Images in rows; columns: image, ground truth, then one column per class with its mask.

  Column titles name the class; a class present in the image has its name in bold and each
  panel shows the classifier's probability for it.
  """
  n, num_classes = masks.shape[0], masks.shape[-1]
  cols = num_classes + 2
  fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)
  for row in range(n):
    axes[row, 0].imshow(image[row])
    axes[row, 1].imshow(label_map_rgb(class_masks[row]))
    for c in range(num_classes):
      ax = axes[row, c + 2]
      ax.imshow(overlay(image[row], masks[row, :, :, c]))
      present = labels[row, c] > 0.5
      ax.set_xlabel(f'p={probabilities[row, c]:.2f}', fontsize=7,
                    fontweight='bold' if present else 'normal')
    for c in range(cols):
      axes[row, c].set_xticks([])
      axes[row, c].set_yticks([])
  titles = ['image', 'ground truth'] + list(class_names)
  for c, title in enumerate(titles):
    axes[0, c].set_title(title, fontsize=8)
  fig.tight_layout()
  return fig


def plot_training_curves(histories: Dict[str, List[dict]]) -> plt.Figure:
  """One panel per stage: train and validation loss per epoch, and validation IoU if logged."""
  stages = [s for s, h in histories.items() if h] or list(histories)[:1]
  fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(5 * max(len(stages), 1), 3.5),
                           squeeze=False)
  for ax, stage in zip(axes[0], stages):
    history = histories.get(stage) or []
    steps = [h['step'] for h in history]
    ax.plot(steps, [h['train'].get('loss', np.nan) for h in history], 'o-', label='train loss')
    ax.plot(steps, [h['val'].get('loss', np.nan) for h in history], 's-', label='val loss')
    ax.set_xlabel('step')
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


def save_figure(fig: plt.Figure, path: str, dpi: int = 110) -> None:
  """Saves through a temporary file and a rename, then closes the figure."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp-{os.getpid()}{ext}'
  fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  os.replace(tmp, path)
