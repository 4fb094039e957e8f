"""Command-line entry: `python -m wysiwyc.main --config=configs/synthetic.py --workdir=DIR`.

Runs every stage of `wysiwyc.train.train_and_evaluate`. Pick a config variant with
`--config=configs/synthetic.py:smoke`; override any config field with `--config.FIELD=VALUE`
(the fields are documented by the comments of the config file). A workdir keeps the settings its
stages were trained with: a re-run that changes one stops, unless `--retrain=STAGE` asks to train
that stage again. `--verbosity=1` also shows the libraries' logs (TensorFlow, JAX, TFDS, orbax).
"""

import importlib.util
import sys
from typing import List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from wysiwyc import config_check
from wysiwyc import errors
from wysiwyc import runtime

def _config_flag_help() -> str:
  lines = ['Experiment config file and optional comma-separated variants, e.g. '
           '--config=configs/synthetic.py:smoke. Override a field with --config.FIELD=VALUE '
           '(e.g. --config.explainer.train.max_steps=300); each field is documented by the '
           'comments of its config file. Config files (configs/):']
  for name, summary, variants in config_check.config_catalog():
    lines.append(f'  {name} (variants: {", ".join(variants) or "none"}): {summary}')
  return '\n'.join(lines)


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, _config_flag_help(), lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, results and figures.')
flags.DEFINE_enum('retrain', '', ['', 'classifier', 'explainer'],
                  'Train this stage and those that depend on it again in --workdir (its '
                  'checkpoints, results and figures are replaced): needed when the config changes '
                  'a setting that a finished stage was trained with.')
flags.mark_flags_as_required(['config', 'workdir'])


def _config_overrides(argv: Sequence[str]) -> List[str]:
  return [arg[len('--config.'):].split('=', 1)[0] for arg in argv if arg.startswith('--config.')]


def _config_value(argv: Sequence[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def describe_flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for a failed flag parse: the unknown config field if there is one, else the last
  line of the error (config files raise from inside a traceback)."""
  config = FLAGS['config'].value
  if config is None and _config_value(argv):  # The config file loaded, an override failed.
    config = _load_config(_config_value(argv))
  for field in _config_overrides(argv) if config is not None else []:
    problem = config_check.unknown_config_field(config, field)
    if problem:
      return problem
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  last = lines[-1] if lines else type(error).__name__
  return last.split(': ', 1)[1] if last.split(': ', 1)[0].endswith(('Error', 'Exception')) else last


def _load_config(config_arg: str):
  """`get_config(arg)` of `--config=PATH:ARG`, as ml_collections calls it; None if it fails."""
  path, _, arg = config_arg.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('wysiwyc_config_check', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (the original error is reported instead)
    return None


_HELP_FLAGS = ('-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def _asks_for_help(argv: Sequence[str]) -> bool:
  return any(arg.split('=', 1)[0] in _HELP_FLAGS for arg in argv[1:])


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with configuration mistakes reported in one line and exit code 2."""
  try:
    config_arg = _config_value(argv)
    if config_arg:
      config_check.check_config_arg(config_arg)
      runtime.quiet_native_logs(argv)  # Before the config file loads TensorFlow.
    try:
      remaining = FLAGS(argv)
    except SystemExit as exit_:  # absl exits 1 after printing the help it was asked for.
      sys.exit(0 if exit_.code == 1 and _asks_for_help(argv) else exit_.code)
    if FLAGS.config is not None:
      FLAGS.config.get('seed')  # A config file that failed to load raises here.
    return remaining
  except errors.UserError as error:
    _exit_with_error(str(error))
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as error:
    _exit_with_error(describe_flag_error(error, argv))


def _exit_with_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  from wysiwyc import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(FLAGS.config)
  logging.debug('JAX process %d/%d, local devices: %s', jax.process_index(),
                jax.process_count(), jax.local_devices())
  if jax.process_index() != 0:  # Process 0 logs progress; the others only warnings and errors.
    logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.retrain)
  except train.Preempted as preempted:
    logging.warning('%s', preempted)
    sys.exit(143)
  except errors.UserError as error:
    # Configuration and data problems: a clear message (once), no traceback.
    _exit_with_error(str(error))


def cli():
  """Console entry point (`wysiwyc`)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
