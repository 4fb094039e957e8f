"""What the command-line tools print: no library chatter at the default verbosity, config mistakes
in one line (wysiwyc.runtime, wysiwyc.main)."""

import glob
import importlib.util
import io
import logging as pylogging
import os
import re
import shutil
import subprocess
import sys

from absl import logging
import pytest

from tests.conftest import REPO, load_config
from wysiwyc import errors
from wysiwyc import config_check
from wysiwyc import console
from wysiwyc import runtime

# Lines the libraries print that a user of the tools has no use for (TensorFlow's C++ notices,
# JAX's platform probing, TFDS's config dump, orbax's checkpoint chatter).
CHATTER = ('oneDNN', 'absl::InitializeLog', 'cpu_feature_guard', "backend 'tpu'",
           'Using custom data configuration', 'read only', 'read_only', 'CheckpointManager',
           'orbax')


def run_cli(*args, timeout=300):
  result = subprocess.run([sys.executable, '-m', 'wysiwyc.main', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
  return result, (result.stdout + result.stderr)


@pytest.mark.parametrize('argv,expected', [
    (['x'], 0), (['x', '--verbosity=1'], 1), (['x', '--verbosity', '2'], 2), (['x', '-v', '1'], 1),
    (['x', '-v=1'], 1), (['x', '--verbosity=-1'], -1), (['x', '--verbosity=abc'], 0),
    (['x', '--', '--verbosity=1'], 0), (['x', '--verbosity'], 0)])
def test_requested_verbosity(argv, expected):
  assert runtime.requested_verbosity(argv) == expected


def test_native_log_level_is_set_only_at_default_verbosity(monkeypatch):
  monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  runtime.quiet_native_logs(['x', '--verbosity=1'])
  assert 'TF_CPP_MIN_LOG_LEVEL' not in os.environ
  runtime.quiet_native_logs(['x'])
  assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '2'
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '0')  # the user's own choice is kept
  runtime.quiet_native_logs(['x'])
  assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '0'


def test_native_notices_are_dropped_and_other_stderr_kept(capfd):
  with runtime._stderr_without(runtime._NATIVE_NOTICES):
    os.write(2, b'I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. ...\n')
    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are ...\n')
    os.write(2, b'E0000 something real failed\n')
    print('python warning', file=sys.stderr)
  lines = capfd.readouterr().err.splitlines()
  assert sorted(lines) == ['E0000 something real failed', 'python warning']


def record(path, level):
  return pylogging.LogRecord('absl', level, path, 1, 'message', (), None)


def test_library_records_below_error_are_dropped_at_default_verbosity():
  handler = logging.get_absl_handler()
  verbosity = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.INFO)
    runtime.quiet_library_logs()
    orbax = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
    tfds = '/venv/site-packages/tensorflow_datasets/core/dataset_builder.py'
    jax_path = '/venv/site-packages/jax/_src/xla_bridge.py'
    ours = os.path.join(REPO, 'wysiwyc', 'loop.py')
    assert not handler.filter(record(orbax, pylogging.WARNING))
    assert not handler.filter(record(tfds, pylogging.WARNING))
    assert not handler.filter(record(jax_path, pylogging.INFO))
    assert handler.filter(record(orbax, pylogging.ERROR))
    assert handler.filter(record(ours, pylogging.INFO))
    logging.set_verbosity(logging.DEBUG)  # --verbosity=1
    runtime.quiet_library_logs()
    assert handler.filter(record(orbax, pylogging.WARNING))
    assert handler.filter(record(jax_path, pylogging.INFO))
    assert not handler.filter(record(jax_path, pylogging.DEBUG))
    assert not handler.filter(record('/usr/lib/python3/matplotlib/font_manager.py',
                                     pylogging.DEBUG))
    assert handler.filter(record(ours, pylogging.DEBUG))
    logging.set_verbosity(2)
    runtime.quiet_library_logs()
    assert handler.filter(record(jax_path, pylogging.DEBUG))
  finally:
    logging.set_verbosity(verbosity)
    handler.filters = [f for f in handler.filters if not isinstance(f, runtime._QuietLibraries)]


# absl's prefix of a log record, e.g. `I1204 18:33:18.134686 140512141278080 evaluation.py:204]`.
ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\]', re.MULTILINE)


def test_smoke_main_job_to_a_file_is_plain_lines_without_library_chatter(tmp_path):
  """The whole console (stdout and stderr) of a smoke run that also builds its data, redirected
  to a file: no TFDS banner or bars, no carriage return, no absl prefix, each line once."""
  log = tmp_path / 'log.txt'
  with open(log, 'w') as f:
    result = subprocess.run(
        [sys.executable, '-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke',
         f'--workdir={tmp_path / "w"}', f'--config.data.data_dir={tmp_path / "tfds"}',
         '--config.classifier.train.num_epochs=1', '--config.explainer.train.num_epochs=1',
         '--config.eval.num_figure_images=1'], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
        text=True, timeout=300)
  output = log.read_text()
  assert result.returncode == 0, output[-3000:]
  assert os.path.exists(tmp_path / 'w' / 'results.md')
  lines = output.splitlines()
  assert '\r' not in output and '\x1b' not in output, output[-3000:]
  assert not ABSL_PREFIX.search(output), output
  assert not [c for c in CHATTER + ('Downloading and preparing', 'Generating splits',
                                    'Shuffling') if c in output], output
  assert len(lines) < 40 and len(set(lines)) == len(lines), output
  assert lines[1].startswith(f'data: synthetic prepared in {tmp_path / "tfds"}'), output
  for stage in ('classifier', 'explainer'):
    assert f'{stage} 4/4 steps' in output  # the last step's progress line
  assert console.SMOKE_LINE in lines and 'results on 16 test images: explainer iou@0.5' in output
  tensorboard = lines[-1].split('TensorBoard: ', 1)[1].split(' --logdir')[0]
  assert os.path.exists(tensorboard) or shutil.which(tensorboard) or (
      tensorboard.endswith('-m tensorboard.main')), tensorboard


def test_plain_progress_writes_a_line_per_tenth_at_most_and_the_last_step():
  out = io.StringIO()
  progress = console.PlainProgress('explainer', 100, 0, min_seconds=0.0, file=out)
  for step in range(100):
    progress.update(1)
    progress.set_postfix(epoch=step // 20 + 1, loss=f'{1 / (step + 1):.4f}')
  progress.close()
  lines = out.getvalue().splitlines()
  assert [line.split(' [')[0] for line in lines] == (
      [f'explainer {n}/100 steps' for n in range(10, 100, 10)] + ['explainer 100/100 steps'])
  assert lines[-1].endswith(', epoch=5, loss=0.0100]')
  out = io.StringIO()  # resumed at step 40, lines at most every hour: the first tenth, the end
  progress = console.PlainProgress('classifier', 50, 40, min_seconds=3600.0, file=out)
  for _ in range(10):
    progress.update(1)
  progress.close()
  progress.close()
  assert [line.split(' [')[0] for line in out.getvalue().splitlines()] == [
      'classifier 45/50 steps', 'classifier 50/50 steps']


def test_log_records_are_plain_lines_at_default_verbosity_and_absl_ones_from_1():
  handler = logging.get_absl_handler()
  warning = record(os.path.join(REPO, 'wysiwyc', 'stages.py'), pylogging.WARNING)
  try:
    runtime._filter_absl_handler(0)  # pylint: disable=protected-access
    assert handler.format(warning) == 'warning: message'
    assert handler.format(record(os.path.join(REPO, 'wysiwyc', 'x.py'), pylogging.INFO)) == (
        'message')
    runtime._filter_absl_handler(1)  # pylint: disable=protected-access
    assert ABSL_PREFIX.match(handler.format(warning))
  finally:
    handler.filters = [f for f in handler.filters if not isinstance(f, runtime._QuietLibraries)]
    handler.setFormatter(logging.PythonFormatter())


def test_results_summary_is_one_line():
  assert console.results_summary({
      'explainer': {'iou@0.5': 0.5, 'per_class_iou@0.5': 0.25, 'specificity_other_over_own': 0.1},
      'all_1': {'iou@0.5': 0.09}, 'classifier': {'accuracy_plain': 0.9, 'num_test_images': 16}}) == (
          'results on 16 test images: explainer iou@0.5 0.500 (all_1 0.090), per-class 0.250, '
          'other/own 0.100, classifier accuracy 0.900')
  assert console.results_summary({'note': 'No masks.', 'classifier': {'accuracy_plain': 0.9}}) == (
      'results: classifier accuracy 0.900')  # the note is logged on its own, once
  assert console.results_summary({'note': 'No test split.'}) == (
      'results: no numbers (see the note above)')


def test_misspelled_config_field_is_one_line(tmp_path):
  result, output = run_cli('--config=configs/synthetic.py:smoke', f'--workdir={tmp_path}',
                           '--config.explainer.trian.num_epochs=1')
  assert result.returncode == 2
  assert output.strip().splitlines() == [
      'error: unknown config field explainer.trian; did you mean explainer.train?']
  assert not os.listdir(tmp_path)


def test_misspelled_variant_is_one_line(tmp_path):
  result, output = run_cli('--config=configs/synthetic.py:smok', f'--workdir={tmp_path}')
  assert result.returncode == 2
  lines = output.strip().splitlines()
  assert len(lines) == 1, output
  assert lines[0].startswith('error: unknown config variant smok of configs/synthetic.py; '
                             'did you mean smoke?')


def test_help_lists_config_files_variants_and_where_fields_are_documented():
  result, output = run_cli('--help')
  assert 'Traceback' not in output and result.returncode == 0, output[-2000:]
  flat = ' '.join(output.split())  # absl wraps the help text at 80 columns
  for name, _, variants in config_check.config_catalog():
    assert f'{name} (variants: {", ".join(variants) or "none"})' in flat
  assert 'synthetic.py (variants:' in flat and 'smoke' in flat
  assert 'documented by the comments of its config file' in flat


def test_config_catalog_reads_variants_without_running_the_files():
  catalog = {name: (summary, variants) for name, summary, variants in config_check.config_catalog()}
  spec = importlib.util.spec_from_file_location('synthetic_config',
                                                os.path.join(config_check.CONFIGS_DIR, 'synthetic.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert catalog['synthetic.py'][1] == tuple(sorted(module.VARIANTS))
  assert 'smoke' in catalog['synthetic_self_explainer.py'][1]
  assert catalog['synthetic.py'][0].startswith('The Explainer on the synthetic shapes')


def test_unknown_config_field_suggests_the_closest_path():
  config = load_config('synthetic', 'smoke')
  assert config_check.unknown_config_field(config, 'explainer.train.num_epochs') is None
  assert config_check.unknown_config_field(config, 'explainer.trian.num_epochs') == (
      'unknown config field explainer.trian; did you mean explainer.train?')
  assert config_check.unknown_config_field(config, 'seeed') == 'unknown config field seeed; did you mean seed?'
  assert config_check.unknown_config_field(config, 'zzz.q') == 'unknown config field zzz'
  # A field below a leaf (an int has no fields).
  assert config_check.unknown_config_field(config, 'seed.x') == 'unknown config field seed.x'


def test_check_config_arg(tmp_path):
  synthetic = os.path.join(config_check.CONFIGS_DIR, 'synthetic.py')
  config_check.check_config_arg(f'{synthetic}:smoke,rts')
  with pytest.raises(errors.UserError, match='did you mean rts'):
    config_check.check_config_arg(f'{synthetic}:smoke,rst')
  with pytest.raises(errors.UserError, match='no config file'):
    config_check.check_config_arg(str(tmp_path / 'nope.py'))
  own = tmp_path / 'own.py'  # a config file outside configs/ checks its own variants
  own.write_text('VARIANTS = ("a",)\n')
  config_check.check_config_arg(f'{own}:b')


def script_imports(path):
  """(line of `runtime.quiet_logs()`, line of the first other wysiwyc import) at a script's top."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    module = ast.parse(f.read())
  quiet, first_import = None, None
  for node in module.body:
    if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == 'runtime.quiet_logs' and quiet is None):
      quiet = node.lineno
    if (isinstance(node, ast.ImportFrom) and (node.module or '').startswith('wysiwyc')
        and [a.name for a in node.names] != ['runtime'] and first_import is None):
      first_import = node.lineno
  return quiet, first_import


SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'experiments', '*.py')))


@pytest.mark.parametrize('path', SCRIPTS, ids=os.path.basename)
def test_experiment_scripts_quiet_the_libraries_first(path):
  with open(path) as f:
    source = f.read()
  if 'app.run(' not in source:
    pytest.skip('not an absl script')
  quiet, first_import = script_imports(path)
  assert quiet is not None and (first_import is None or quiet < first_import), (
      f'{os.path.basename(path)}: call `runtime.quiet_logs()` at the top, before importing other '
      'wysiwyc modules (they load TensorFlow, whose notices it drops)')
