"""What `wysiwyc.loop` leaves for the figures: a stage's history and the epoch it kept."""

import os

import numpy as np

from wysiwyc import checkpointing
from wysiwyc import loop
from wysiwyc import viz


def test_stage_record_gives_the_kept_epoch_that_the_figure_marks(tmp_path):
  """Epoch 3's validation loss is the lowest but improves on epoch 2's by less than min_delta:
  `fit` kept epoch 2, and so does the figure (not the lowest loss)."""
  history = [{'epoch': e, 'step': 4 * e, 'train': {'loss': 1.0}, 'val': {'loss': loss}}
             for e, loss in ((1, 0.9), (2, 0.5), (3, 0.4999))]
  directory = str(tmp_path / 'explainer')
  checkpointing.save(checkpointing.manager(os.path.join(directory, 'checkpoints')), 12,
                     {'x': np.zeros(2, np.float32)},
                     {'history': history, 'best_epoch': 2, 'done': True})
  recorded, best_epoch = loop.stage_record(directory)
  assert recorded == history and best_epoch == 2
  assert loop.stage_record(str(tmp_path / 'nothing')) == ([], None)
  fig = viz.plot_training_curves({'explainer': recorded}, {'explainer': best_epoch})
  marks = [line for line in fig.axes[0].get_lines()
           if line.get_label().startswith('best checkpoint')]
  assert marks[0].get_label() == 'best checkpoint (step 8)'
