"""Process set-up shared by the command-line tools: quieter library logs, compilation cache."""

import logging as pylogging
import os

from absl import logging
import jax


# Libraries whose INFO lines drown the progress output; their warnings still show.
_QUIET_LIBRARIES = ('orbax', 'tensorflow_datasets', 'etils', 'absl/flags')


class _QuietLibraries(pylogging.Filter):

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.WARNING:
      return True
    return not any(f'/{name}/' in record.pathname for name in _QUIET_LIBRARIES)


def quiet_library_logs() -> None:
  """Keeps INFO logs of wysiwyc, drops the INFO chatter of checkpointing and data libraries."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def use_compilation_cache() -> None:
  """Persists compiled steps across runs (re-runs and resumes start faster), unless the user
  chose a cache with JAX_COMPILATION_CACHE_DIR."""
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.expanduser('~'), '.cache', 'wysiwyc', 'jax'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
