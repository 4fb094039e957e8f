"""Tests of wysiwyc.viz: what the figures draw (titles, labels, legends, panels)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from wysiwyc import viz

CLASSES = ('circle', 'square', 'triangle')


def figure_inputs(n=2, size=16, with_ground_truth=True):
  rng = np.random.default_rng(0)
  class_masks = np.zeros((n, size, size, len(CLASSES)), np.float32)
  class_masks[:, :8, :8, 0] = 1
  class_masks[:, 8:, 8:, 2] = 1
  return dict(
      image=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      masks=rng.random((n, size, size, len(CLASSES))).astype(np.float32),
      class_masks=class_masks if with_ground_truth else None,
      labels=np.array([[1, 0, 1]] * n, np.float32) if with_ground_truth else None,
      probabilities=np.array([[0.9, 0.2, 0.4]] * n, np.float32),
      class_names=CLASSES)


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close('all')


def texts(fig):
  return ' '.join(t.get_text() for t in fig.texts)


def test_masks_figure_with_ground_truth_has_its_legend_and_caption():
  fig = viz.plot_class_masks(**figure_inputs())
  axes = fig.axes
  assert len(axes) == 2 * (2 + len(CLASSES))
  assert [ax.get_title() for ax in axes[:5]] == ['image', 'ground truth', *CLASSES]
  assert len(fig.legends) == 1
  assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASSES)
  assert fig.legends[0].get_title().get_text() == 'ground truth'
  assert 'bold: predicted (p > 0.5)' in texts(fig) and 'ground truth' in texts(fig)


def test_bold_means_predicted_and_frames_mean_ground_truth():
  fig = viz.plot_class_masks(**figure_inputs(n=1))
  class_axes = fig.axes[2:]
  labels = [ax.xaxis.label for ax in class_axes]
  assert [label.get_text() for label in labels] == ['p=0.90', 'p=0.20', 'p=0.40']
  assert [label.get_fontweight() for label in labels] == ['bold', 'normal', 'normal']
  widths = [ax.spines['left'].get_linewidth() for ax in class_axes]
  assert widths[0] == widths[2] == 3 and widths[1] < 3


def test_threshold_decides_bold():
  fig = viz.plot_class_masks(**figure_inputs(n=1), threshold=0.3)
  weights = [ax.xaxis.label.get_fontweight() for ax in fig.axes[2:]]
  assert weights == ['bold', 'normal', 'bold']
  assert 'p > 0.3' in texts(fig)


def test_single_label_bolds_the_most_probable_class_whatever_its_p():
  inputs = figure_inputs(n=1)
  inputs['probabilities'] = np.array([[0.2, 0.45, 0.35]], np.float32)
  fig = viz.plot_class_masks(**inputs, multilabel=False)
  weights = [ax.xaxis.label.get_fontweight() for ax in fig.axes[2:]]
  assert weights == ['normal', 'bold', 'normal']
  assert 'bold: predicted (the most probable class)' in texts(fig) and 'p > 0.5' not in texts(fig)


def test_masks_figure_without_ground_truth_has_no_ground_truth_panel():
  fig = viz.plot_class_masks(**figure_inputs(n=1, with_ground_truth=False))
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ['image', *CLASSES]
  assert not fig.legends
  assert 'bold: predicted' in texts(fig) and 'ground truth' not in texts(fig)


def history(losses, iou=None):
  entries = []
  for epoch, loss in enumerate(losses, start=1):
    val = {'loss': loss, **({'iou@0.5': iou[epoch - 1]} if iou else {})}
    entries.append({'epoch': epoch, 'step': 3 * epoch, 'train': {'loss': loss + 0.1}, 'val': val})
  return entries


def best_lines(ax):
  return [line for line in ax.get_lines() if line.get_label().startswith('best checkpoint')]


def test_training_curves_labels_best_checkpoint_and_integer_ticks():
  fig = viz.plot_training_curves({'classifier': history([0.9, 0.5, 0.7]),
                                  'explainer': history([1.0, 0.8, 0.6, 0.7], [0.1, 0.2, 0.3, 0.2])})
  classifier, explainer = fig.axes[:2]
  for ax in (classifier, explainer):
    assert ax.get_xlabel() == 'training step' and ax.get_ylabel() == 'loss'
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
  assert [ax.get_ylabel() for ax in fig.axes[2:]] == ['val iou@0.5']
  assert best_lines(classifier)[0].get_xdata()[0] == 6  # epoch 2, the lowest val loss
  assert best_lines(explainer)[0].get_xdata()[0] == 9
  legend = [t.get_text() for t in classifier.get_legend().get_texts()]
  assert 'best checkpoint (step 6)' in legend


def test_training_curves_mark_the_given_best_epoch():
  fig = viz.plot_training_curves({'explainer': history([1.0, 0.8, 0.79])},
                                 best_epochs={'explainer': 2})
  assert best_lines(fig.axes[0])[0].get_xdata()[0] == 6


def test_training_curves_of_an_empty_history_draw_no_best():
  fig = viz.plot_training_curves({'classifier': []})
  assert not best_lines(fig.axes[0])


def test_training_curves_of_one_epoch_have_integer_ticks_only():
  fig = viz.plot_training_curves({'classifier': history([0.9]), 'explainer': history([1.0])})
  for ax in fig.axes[:2]:
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [3.0], ticks
