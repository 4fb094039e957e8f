"""experiments/fill_tables.py and experiments/seeds.py: generated tables and seed statistics."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments'))

import fill_tables  # pylint: disable=g-import-not-at-top,wrong-import-position

PAGE = 'intro\n<!-- begin numbers -->\nold | table\n<!-- end numbers -->\noutro\n'


def test_fill_replaces_only_the_marked_block():
  filled = fill_tables.fill(PAGE, {'numbers': '| a |\n|---|\n| 1 |\n\n'})
  assert filled == ('intro\n<!-- begin numbers -->\n| a |\n|---|\n| 1 |\n'
                    '<!-- end numbers -->\noutro\n')
  assert fill_tables.fill(filled, {'numbers': 'x'}).count('x') == 1  # idempotent markers


def test_fill_refuses_a_block_the_page_does_not_have():
  with pytest.raises(ValueError, match='begin other'):
    fill_tables.fill(PAGE, {'other': 'x'})


def test_cli_rewrites_the_page_from_files(tmp_path):
  page, table = tmp_path / 'page.md', tmp_path / 'table.md'
  page.write_text(PAGE)
  table.write_text('| generated |\n')
  script = os.path.join(REPO, 'experiments', 'fill_tables.py')
  run = lambda *args: subprocess.run([sys.executable, script, *args], capture_output=True,
                                     text=True, timeout=60)
  assert run(str(page), f'numbers={table}').returncode == 0
  assert '| generated |' in page.read_text() and 'old | table' not in page.read_text()
  failed = run(str(page), f'missing={table}')
  assert failed.returncode == 2 and 'begin missing' in failed.stderr


def test_seed_statistics_are_mean_population_std_and_min():
  script = ('import json, sys; sys.path.insert(0, "experiments"); import seeds; '
            'rows = [{"variant": "seed=0", "iou@0.5": 0.7, "wall_seconds": 10.0}, '
            '{"variant": "seed=1", "iou@0.5": 0.8, "wall_seconds": 30.0}]; '
            'print(json.dumps(seeds.summarize(rows)))')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  mean, std, low = json.loads(result.stdout.strip().splitlines()[-1])
  assert mean == {'variant': 'mean', 'iou@0.5': pytest.approx(0.75), 'wall_seconds': 20.0}
  assert std == {'variant': 'std', 'iou@0.5': pytest.approx(0.05), 'wall_seconds': 10.0}
  assert low == {'variant': 'min', 'iou@0.5': pytest.approx(0.7), 'wall_seconds': 10.0}
