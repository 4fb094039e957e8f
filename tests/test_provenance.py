"""The provenance of a run's numbers (wysiwyc.provenance)."""

import re
import subprocess

import jax

from tests.conftest import REPO
from wysiwyc import provenance


def test_git_state_of_this_checkout():
  state = provenance.git_state()
  head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=False)
  if head.returncode != 0:  # not run from a git checkout: nothing to say
    assert state == {}
    return
  assert state['git_commit'] == head.stdout.strip()
  status = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                          capture_output=True, text=True, check=True).stdout
  assert state['git_dirty'] == bool(status.strip())


def test_git_state_is_empty_outside_the_package_checkout(monkeypatch, tmp_path):
  monkeypatch.setattr(provenance, '_ROOT', str(tmp_path))
  assert provenance.git_state() == {}


def test_describe_names_versions_devices_and_stage_seconds():
  histories = {'classifier': [{'epoch': 1, 'seconds': 1.25}, {'epoch': 2, 'seconds': 2.0}],
               'distill': [], 'explainer': [{'epoch': 1, 'seconds': 4.5}]}
  described = provenance.describe(histories)
  assert set(described['versions']) == {'wysiwyc', 'jax', 'flax', 'tensorflow_datasets'}
  assert described['versions']['jax'] == jax.__version__
  assert re.match(r'\d+\.\d+', described['versions']['wysiwyc'])
  assert described['device_count'] == jax.device_count()
  assert described['device_kind'] == jax.devices()[0].device_kind
  assert described['stage_seconds'] == {'classifier': 3.25, 'explainer': 4.5}
