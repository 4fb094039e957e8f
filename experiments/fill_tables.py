r"""Puts generated tables into a Markdown page, so that no number in it is typed by hand.

  python experiments/fill_tables.py README.md comparison=workdirs/synthetic/comparison.md \
      seeds=workdirs/seeds/seeds.md

Each NAME=FILE replaces what stands between the lines `<!-- begin NAME -->` and
`<!-- end NAME -->` of the page with the contents of FILE (written by the command that the
page names next to it). A name without its two markers in the page is an error; the page is
rewritten atomically.
"""

import os
import re
import sys
from typing import Dict


def fill(page: str, blocks: Dict[str, str]) -> str:
  """`page` with the text between each block's begin and end markers replaced."""
  for name, text in blocks.items():
    marker = re.escape(name)
    pattern = re.compile(rf'(<!-- begin {marker} -->\n).*?(<!-- end {marker} -->)', re.DOTALL)
    if not pattern.search(page):
      raise ValueError(f'No "<!-- begin {name} -->" ... "<!-- end {name} -->" block in the page.')
    page = pattern.sub(lambda m: m.group(1) + text.rstrip('\n') + '\n' + m.group(2), page)
  return page


def main(argv) -> int:
  if len(argv) < 3 or any('=' not in a for a in argv[2:]):
    print(__doc__, file=sys.stderr)
    return 2
  path = argv[1]
  blocks = {}
  for assignment in argv[2:]:
    name, source = assignment.split('=', 1)
    with open(source) as f:
      blocks[name] = f.read()
  with open(path) as f:
    page = f.read()
  try:
    filled = fill(page, blocks)
  except ValueError as e:
    print(f'{path}: {e}', file=sys.stderr)
    return 2
  with open(path + '.tmp', 'w') as f:
    f.write(filled)
  os.replace(path + '.tmp', path)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
