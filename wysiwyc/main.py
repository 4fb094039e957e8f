"""Command-line entry: `python -m wysiwyc.main --config=configs/synthetic.py --workdir=DIR`.

Runs every stage of `wysiwyc.train.train_and_evaluate`. Override any config field with
`--config.FIELD=VALUE`; pick a config variant with `--config=configs/synthetic.py:smoke`.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from wysiwyc import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, results and figures.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  from wysiwyc import distributed  # pylint: disable=g-import-not-at-top
  from wysiwyc import errors  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(FLAGS.config)
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  if jax.process_index() != 0:  # Process 0 logs progress; the others only warnings and errors.
    logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted as preempted:
    logging.warning('%s', preempted)
    sys.exit(143)
  except errors.UserError as error:
    # Configuration and data problems: a clear message (once), no traceback.
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)


def cli():
  """Console entry point (`wysiwyc`)."""
  app.run(main)


if __name__ == '__main__':
  cli()
