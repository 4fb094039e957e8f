"""experiments/oracle_explainer.py: its scores on hand-made masks, and a tiny run."""

import subprocess
import sys

import numpy as np

from tests.conftest import REPO
import experiments.oracle_explainer as oracle  # pylint: disable=g-bad-import-order


def _two_objects():
  """One 8x8 image, class 0 on the left half, class 1 on the right half, class 2 absent."""
  class_masks = np.zeros((1, 8, 8, 3), np.float32)
  class_masks[0, :, :4, 0] = 1
  class_masks[0, :, 4:, 1] = 1
  return class_masks, np.array([[1, 1, 0]], np.float32)


def test_class_specific_masks_score_perfectly():
  class_masks, labels = _two_objects()
  scores = oracle.score(class_masks, class_masks, labels)
  assert scores == {'iou@0.5': [1.0], 'per_class_iou@0.5': [1.0, 1.0],
                    'cross_class_coverage': [0.0, 0.0]}


def test_shared_objectness_map_scores_half_per_class_and_full_cross_coverage():
  class_masks, labels = _two_objects()
  shared = np.repeat(class_masks.max(-1, keepdims=True), 3, axis=-1)
  scores = oracle.score(shared, class_masks, labels)
  assert scores['iou@0.5'] == [1.0]
  np.testing.assert_allclose(scores['per_class_iou@0.5'], [0.5, 0.5])
  np.testing.assert_allclose(scores['cross_class_coverage'], [1.0, 1.0])


def test_soft_dice_loss_is_zero_for_the_truth_and_ignores_absent_classes():
  class_masks, _ = _two_objects()
  assert float(oracle.soft_dice_loss(class_masks, class_masks)) < 1e-6
  swapped = class_masks[..., [1, 0, 2]]
  np.testing.assert_allclose(float(oracle.soft_dice_loss(swapped, class_masks)), 1.0, atol=1e-6)


def test_tiny_run_prints_its_scores(tmp_path):
  command = [sys.executable, 'experiments/oracle_explainer.py',
             '--config=configs/synthetic.py:smoke', f'--config.data.data_dir={tmp_path}',
             '--steps=3', '--eval_examples=8']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'oracle explainer after 3 steps on 8 test images: iou@0.5' in result.stdout
