"""What `wysiwyc.loop` leaves for the figures: a stage's history and the epoch it kept."""

import logging as pylogging
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


def test_reading_a_checkpoint_folder_read_only_logs_no_warning(tmp_path, caplog):
  directory = str(tmp_path / 'best')
  checkpointing.save(checkpointing.manager(directory, max_to_keep=1), 0,
                     {'w': np.ones(3, np.float32)}, {'source': 'test'})
  with caplog.at_level(pylogging.WARNING):
    checkpointing.manager(directory, create=False)
  assert not caplog.records, [r.getMessage() for r in caplog.records]
  # The filter drops that notice only: other warnings of the same logger still show.
  with caplog.at_level(pylogging.WARNING):
    pylogging.getLogger('absl').warning('something else')
  assert [r.getMessage() for r in caplog.records] == ['something else']
