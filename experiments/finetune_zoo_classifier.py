r"""Fine-tunes a shipped zoo classifier on another config's data and ships it as a new entry.

  python experiments/finetune_zoo_classifier.py --start=synthetic_shapes_cnn \
      --config=configs/synthetic.py:scratch,natural --workdir=workdirs/natural_classifier \
      --name=synthetic_natural_cnn --config.classifier.train.num_epochs=2 \
      --config.classifier.train.patience=2 --config.classifier.train.warmup_steps=100 \
      --config.classifier.train.decay_steps=938

`experiments/train_zoo_classifier.py` (same flags, same outputs), with the classifier's training
starting from the weights of zoo entry `--start` instead of random ones; the new entry's .json
names it under 'started_from'. For data sets whose classifier learns slowly from random weights
within the CPU budget (the `natural` variant: per-class validation accuracy 0.755 after 4 epochs
from random weights), started from the classifier of the same shapes drawn flat.
"""

import os
import sys

from absl import app
from absl import flags
import jax

from wysiwyc import runtime  # pylint: disable=g-bad-import-order
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_zoo_classifier  # pylint: disable=g-import-not-at-top,wrong-import-position

from wysiwyc import data_parallel  # pylint: disable=g-bad-import-order,wrong-import-position
from wysiwyc import model_setup  # pylint: disable=wrong-import-position
from wysiwyc.models import shipped  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('start', 'synthetic_shapes_cnn', 'Zoo classifier the training starts from.')


def start_from_entry(name: str):
  """A replacement of `model_setup.with_pretrained_weights` that puts entry `name`'s variables
  into the classifier's fresh training state."""

  def with_entry_weights(model, state, mesh):
    del model
    target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
    variables = shipped.load(name, target)
    return data_parallel.replicate(state.replace(params=variables['params'],
                                                 batch_stats=variables['batch_stats']), mesh)

  return with_entry_weights


def main(argv):
  metadata = shipped.read_metadata(FLAGS.start)
  if 'classifier' not in metadata:
    raise app.UsageError(f'--start={FLAGS.start!r} is not a zoo classifier.')
  model_setup.with_pretrained_weights = start_from_entry(FLAGS.start)
  # Only the classifier stage runs here: its console line names the start.
  model_setup.start_description = lambda model_config: f'shipped {shipped.PREFIX}{FLAGS.start}'
  write_entry = shipped.write_entry
  shipped.write_entry = lambda output_dir, name, payload, meta: write_entry(
      output_dir, name, payload, {**meta, 'started_from': shipped.PREFIX + FLAGS.start})
  train_zoo_classifier.main(argv)


if __name__ == '__main__':
  app.run(main)
