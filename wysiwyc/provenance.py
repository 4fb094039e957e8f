"""Where a run's numbers come from: the package version and, from a git checkout, its commit and
whether the tree was modified; the JAX, Flax and TFDS versions; the devices; the wall time that
each stage took to train. `results.json` carries it under 'provenance'.
"""

import importlib.metadata
import os
import subprocess
from typing import Dict, List, Optional

import jax

# The checkout the package is imported from, when it is one (not an installed copy).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGES = {'wysiwyc': 'wysiwyc', 'jax': 'jax', 'flax': 'flax',
             'tensorflow_datasets': 'tensorflow-datasets'}


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def _git(*args: str) -> Optional[str]:
  try:
    result = subprocess.run(['git', '-C', _ROOT, *args], capture_output=True, text=True,
                            timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def git_state() -> Dict[str, object]:
  """{'git_commit': HEAD, 'git_dirty': tracked files modified} when the package runs from its
  own git checkout; {} otherwise (an installed package, no git)."""
  top = _git('rev-parse', '--show-toplevel')
  if not top or os.path.realpath(top) != os.path.realpath(_ROOT):
    return {}
  commit = _git('rev-parse', 'HEAD')
  status = _git('status', '--porcelain', '--untracked-files=no')
  if commit is None or status is None:
    return {}
  return {'git_commit': commit, 'git_dirty': bool(status)}


def stage_seconds(histories: Dict[str, List[dict]]) -> Dict[str, float]:
  """Per trained stage, the wall seconds of its epochs (training and validation, across
  resumes), from the stage's history; stages without one (not trained here) are left out."""
  return {stage: round(sum(entry.get('seconds', 0.0) for entry in history), 2)
          for stage, history in histories.items() if history}


def describe(histories: Dict[str, List[dict]]) -> Dict[str, object]:
  """The 'provenance' entry of results.json."""
  devices = jax.devices()
  return {
      'versions': {name: _version(distribution) for name, distribution in _PACKAGES.items()},
      **git_state(),
      'device_kind': devices[0].device_kind, 'device_count': len(devices),
      'process_count': jax.process_count(),
      'stage_seconds': stage_seconds(histories)}
