"""Process set-up shared by the command-line tools: quiet library logs, compilation cache.

At the default `--verbosity=0` the tools print their own lines only: the INFO and WARNING lines
of the libraries (TensorFlow's oneDNN notice, JAX's platform probing, TFDS's "Using custom data
configuration", orbax's checkpoint chatter) are dropped; their errors still show; and log records
read as plain lines ('warning: ...'), without absl's `I1204 18:33:18.134686 ... file.py:204]`
prefix. `--verbosity=1` (absl's flag) brings the libraries' lines and absl's prefix back,
`--verbosity=2` adds their DEBUG lines.
"""

import contextlib
import logging as pylogging
import os
import re
import sys
import tempfile
from typing import Optional, Sequence

from absl import logging
import jax

# Libraries whose INFO and WARNING lines are dropped at the default verbosity.
QUIET_LIBRARIES = ('orbax', 'tensorflow_datasets', 'tensorflow', 'etils', 'absl/flags', 'jax',
                   'jaxlib', 'flax', 'chex', 'optax', 'keras')

_VERBOSITY_FLAG = re.compile(r'^(?:--verbosity|-v|--v)(?:=(.*))?$')


def requested_verbosity(argv: Optional[Sequence[str]] = None) -> int:
  """absl's `--verbosity`/`-v` as given in `argv` (default `sys.argv`), read before flag parsing
  (which is too late for TensorFlow's C++ logs); 0 when absent or not an integer."""
  argv = list(sys.argv if argv is None else argv)
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == '--':
      break
    match = _VERBOSITY_FLAG.match(arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)
  try:
    return int(value) if value is not None else 0
  except ValueError:
    return 0  # absl's flag parsing reports the bad value.


# What TensorFlow's C++ code prints when it loads, before its log level applies.
_NATIVE_NOTICES = re.compile(r'All log messages before absl::InitializeLog|oneDNN custom operations '
                             r'are on|cpu_feature_guard|To enable the following instructions')


def quiet_native_logs(argv: Optional[Sequence[str]] = None) -> None:
  """Unless `--verbosity` >= 1: imports TensorFlow without its load-time notices (oneDNN, CPU
  instructions) and sets its C++ log level to errors (a TF_CPP_MIN_LOG_LEVEL the user set is
  kept). Call it before anything imports TensorFlow."""
  with native_notices_dropped(argv):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel


@contextlib.contextmanager
def native_notices_dropped(argv: Optional[Sequence[str]] = None):
  """Runs the block (which may import TensorFlow) without TensorFlow's load-time notices and with
  its C++ log level at errors, unless `--verbosity` >= 1."""
  if requested_verbosity(argv) >= 1:
    yield
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with _stderr_without(_NATIVE_NOTICES):
    yield


@contextlib.contextmanager
def _stderr_without(notices: re.Pattern):
  """Captures file descriptor 2 (C++ and Python writes alike) in the block, then writes back the
  lines that `notices` does not match, so errors still show."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode(errors='replace').splitlines(keepends=True)
      sys.stderr.write(''.join(line for line in lines if not notices.search(line)))
      sys.stderr.flush()


# The project's own code (wysiwyc/, experiments/, tests/), whose records always pass.
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))).replace(os.sep, '/') + '/'


def _from_library(record: pylogging.LogRecord) -> bool:
  path = record.pathname.replace(os.sep, '/')
  return any(f'/{name}/' in path for name in QUIET_LIBRARIES)


def _from_project(record: pylogging.LogRecord) -> bool:
  path = record.pathname.replace(os.sep, '/')
  return path.startswith(_PROJECT) and '-packages/' not in path


class _QuietLibraries(pylogging.Filter):
  """Keeps the project's records; drops the others below INFO, and those of QUIET_LIBRARIES
  below `library_level`."""

  def __init__(self, library_level: int):
    super().__init__()
    self.library_level = library_level

  def filter(self, record: pylogging.LogRecord) -> bool:
    if _from_project(record):
      return True
    if _from_library(record):
      return record.levelno >= self.library_level
    return record.levelno >= pylogging.INFO


def quiet_library_logs() -> None:
  """Filters absl's handler by the parsed `--verbosity` (call it after flag parsing, e.g. first
  thing in `main`): at 0 the libraries show errors only, at 1 also their INFO and WARNING lines,
  from 2 on also their DEBUG lines (thousands per run)."""
  _filter_absl_handler(logging.get_verbosity())


def quiet_logs(argv: Optional[Sequence[str]] = None) -> None:
  """A script's first call, before its imports load TensorFlow: `quiet_native_logs`, and absl's
  handler filtered as `quiet_library_logs` does, both by the `--verbosity` in `argv`."""
  quiet_native_logs(argv)
  _filter_absl_handler(requested_verbosity(argv))


class PlainFormatter(pylogging.Formatter):
  """A record as its message, after 'warning: ' or 'error: ' at those levels."""

  def format(self, record: pylogging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
      message = f'{message}\n{self.formatException(record.exc_info)}'
    if record.levelno >= pylogging.ERROR:
      return f'error: {message}'
    return f'warning: {message}' if record.levelno >= pylogging.WARNING else message


def _filter_absl_handler(verbosity: int) -> None:
  handler = logging.get_absl_handler()
  handler.filters = [f for f in handler.filters if not isinstance(f, _QuietLibraries)]
  if verbosity < 2:
    handler.addFilter(_QuietLibraries(pylogging.ERROR if verbosity < 1 else pylogging.INFO))
  handler.setFormatter(PlainFormatter() if verbosity < 1 else logging.PythonFormatter())


def use_compilation_cache() -> None:
  """Persists compiled steps across runs (re-runs and resumes start faster), unless the user
  chose a cache with JAX_COMPILATION_CACHE_DIR."""
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.expanduser('~'), '.cache', 'wysiwyc', 'jax'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
