"""Checks of README.md and docs/: relative links resolve, and the README's two commands are the
ones that run (the test command is what .ci/run runs; the main job's flags parse)."""

import glob
import os
import re
import shlex
from typing import List, Tuple
from urllib.parse import unquote, urlparse

import markdown_it
import pytest

from tests.conftest import REPO, load_config
from wysiwyc import config_check

PAGES = [os.path.join(REPO, 'README.md')] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))


def read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def links(path: str) -> List[str]:
  """The targets of a page's Markdown links and images (not of code that looks like one)."""
  targets = []
  for token in markdown_it.MarkdownIt().parse(read(path)):
    for child in token.children or []:
      if child.type == 'link_open':
        targets.append(child.attrs['href'])
      elif child.type == 'image':
        targets.append(child.attrs['src'])
  return targets


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path: str) -> set:
  seen, result = {}, set()
  for token_index, token in enumerate(tokens := markdown_it.MarkdownIt().parse(read(path))):
    if token.type == 'heading_open':
      base = slug(tokens[token_index + 1].content)
      count = seen.get(base, 0)
      seen[base] = count + 1
      result.add(base if count == 0 else f'{base}-{count}')
  return result


def relative_links() -> List[Tuple[str, str]]:
  return [(page, target) for page in PAGES for target in links(page)
          if not urlparse(target).scheme and not target.startswith('//')]


def test_pages_have_links_to_check():
  targets = [target for _, target in relative_links()]
  assert 'docs/synthetic.md' in targets  # the parser finds the README's links


@pytest.mark.parametrize('page,target', relative_links(),
                         ids=lambda value: os.path.relpath(value, REPO) if os.path.isabs(
                             str(value)) else str(value))
def test_relative_link_resolves(page, target):
  file_part, _, anchor = target.partition('#')
  path = os.path.normpath(os.path.join(os.path.dirname(page), unquote(file_part))) if file_part \
      else page
  assert os.path.exists(path), f'{os.path.relpath(page, REPO)} links to missing {target}'
  if anchor and path.endswith('.md'):
    assert anchor in anchors(path), f'{os.path.relpath(page, REPO)}: no heading #{anchor} in {path}'


def test_anchor_slugs_follow_github():
  assert slug('What a good run gives, and how to read it') == 'what-a-good-run-gives-and-how-to-read-it'
  assert slug('The Explainer against the baselines') == 'the-explainer-against-the-baselines'
  assert slug('`iou@0.5` and F1') == 'iou05-and-f1'


def readme_commands() -> List[str]:
  """The README's indented code lines, in order (its first two are the commands to run)."""
  return [line[4:] for line in read(os.path.join(REPO, 'README.md')).splitlines()
          if line.startswith('    ') and line.strip()]


def test_readme_test_command_is_what_ci_runs():
  ci = [line for line in read(os.path.join(REPO, '.ci', 'run')).splitlines()
        if line and not line.startswith(('#', 'set ', 'cd '))]
  assert readme_commands()[1] == ci[-1]


def test_readme_main_command_is_a_valid_main_job():
  setup, _, run = readme_commands()[0].rpartition(' && ')
  assert setup == 'python3 -m venv .venv && .venv/bin/pip install -e .'
  args = shlex.split(run)
  assert args[:3] == ['.venv/bin/python', '-m', 'wysiwyc.main']
  flags = dict(arg[2:].split('=', 1) for arg in args[3:])
  assert set(flags) == {'config', 'workdir'}, flags  # plain --config and --workdir
  config_file, _, variants = flags['config'].partition(':')
  config_check.check_config_arg(os.path.join(REPO, config_file) + (f':{variants}' if variants else ''))
  assert not variants, 'the front-page command runs the default config'
  name = os.path.splitext(os.path.basename(config_file))[0]
  assert load_config(name).data.name  # the config loads


@pytest.mark.parametrize('page', PAGES, ids=lambda page: os.path.relpath(page, REPO))
def test_pages_do_not_point_at_the_trackers_history(page):
  """Pages are written for a user: no issue numbers or the design notes' seed numbers."""
  text = read(page)
  found = re.findall(r'\bissues?\s*#?\d+|(?<![\w`])#\d+\b|\bseed 00\d\b', text, re.IGNORECASE)
  assert not found, f'{os.path.relpath(page, REPO)}: {found}'


# A run's temporary folder: /tmp/..., /var/tmp/..., macOS's /private/var/folders/..., pytest's.
TEMPORARY_PATH = re.compile(r'(?<![\w.~-])/(?:var/)?tmp/|/private/var/folders/|pytest-of-')


@pytest.mark.parametrize('page', PAGES, ids=lambda page: os.path.relpath(page, REPO))
def test_pages_name_no_temporary_run_path(page):
  """A page describes what a reader runs and gets, not the folders of the run that made it."""
  found = [f'line {number}: {line.strip()}' for number, line in
           enumerate(read(page).splitlines(), start=1) if TEMPORARY_PATH.search(line)]
  assert not found, f'{os.path.relpath(page, REPO)}: ' + '; '.join(found)


def test_temporary_path_pattern():
  for text in ('--workdir=/tmp/w', 'Workdir `/tmp/exp/default`', '/var/tmp/x', 'pytest-of-me/'):
    assert TEMPORARY_PATH.search(text), text
  for text in ('workdirs/tmp/x', '~/tmp/x', '/mnt/shared/voc', 'W/tmp/'):
    assert not TEMPORARY_PATH.search(text), text


def generated_row(page: str, block: str, row: str) -> dict:
  """{column: cell} of a row of a page's generated table `<!-- begin block -->`."""
  text = read(os.path.join(REPO, page)).split(f'<!-- begin {block} -->')[1].split(
      f'<!-- end {block} -->')[0]
  lines = [line for line in text.splitlines() if line.startswith('|')]
  header = [cell.strip() for cell in lines[0].strip('|').split('|')]
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip('|').split('|')]
    if cells[0] == row:
      return dict(zip(header, cells))
  raise AssertionError(f'{page}: no row {row!r} in block {block!r}')


def test_readme_prose_numbers_agree_with_its_generated_tables():
  """The README's sentences quote its tables: the Explainer's time per image (comparison) and
  a good run's iou@0.5 and other/own (the seeds' mean, at the sentence's precision)."""
  readme = ' '.join(read(os.path.join(REPO, 'README.md')).split())
  seconds = generated_row('README.md', 'comparison', 'explainer')['seconds_per_image']
  assert f"against the Explainer's {seconds} s" in readme
  mean = generated_row('README.md', 'seeds', 'mean')
  iou, ratio = re.search(r'`iou@0.5` near (\d\.\d+) .* `other / own` near (\d\.\d+)',
                         readme).groups()
  for quoted, value in ((iou, mean['iou@0.5']), (ratio, mean['specificity_other_over_own'])):
    half_digit = 0.5 * 10 ** -(len(quoted) - 2)  # 'near 0.08' covers 0.075 to 0.085
    assert abs(float(value) - float(quoted)) <= half_digit + 1e-9, (quoted, value)
