"""The package's structure: no import cycles among wysiwyc modules, and no long module without a
reason written at its top (DESIGN.md section 4)."""

import ast
import os
import re
import textwrap
from typing import Dict, List, Optional, Set

from tests.conftest import REPO

MAX_LINES = 400
# A module longer than MAX_LINES says why, in a docstring line that starts with this.
LONG_MODULE_MARKER = f'Longer than {MAX_LINES} lines because'


def module_files(root: str, package: str) -> Dict[str, str]:
  """{dotted module name: path} of every .py file under `root`/`package`."""
  files = {}
  for folder, _, names in os.walk(os.path.join(root, package)):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        files['.'.join(parts)] = path
  return files


def _imported(node: ast.AST, module: str, is_package: bool, modules: Set[str]) -> List[str]:
  """The modules of `modules` that one import statement of `module` names."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  elif isinstance(node, ast.ImportFrom):
    base = node.module or ''
    if node.level:  # relative: from the module's package, `level - 1` packages up
      package = module.split('.') if is_package else module.split('.')[:-1]
      package = package[:len(package) - (node.level - 1)]
      base = '.'.join(package + ([base] if base else []))
    names = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
             for alias in node.names]
  else:
    return []
  found = []
  for name in names:
    while name and name not in modules:  # `import a.b.c` of a function or class: its module
      name = name.rpartition('.')[0]
    if name and name != module:
      found.append(name)
  return found


def import_graph(root: str, package: str = 'wysiwyc') -> Dict[str, Set[str]]:
  """{module: the package's modules it imports}, at module level or inside functions."""
  files = module_files(root, package)
  graph = {}
  for module, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    graph[module] = {name for node in ast.walk(tree)
                     for name in _imported(node, module, is_package, set(files))}
  return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # module -> 'open' while on the current path, 'done' once fully explored
  path = []

  def visit(module):
    state[module] = 'open'
    path.append(module)
    for imported in sorted(graph.get(module, ())):
      if state.get(imported) == 'open':
        return path[path.index(imported):] + [imported]
      if imported not in state:
        cycle = visit(imported)
        if cycle:
          return cycle
    path.pop()
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def long_modules_without_reason(root: str, package: str = 'wysiwyc') -> List[str]:
  """'path (N lines)' of every module over MAX_LINES lines whose docstring has no line starting
  with LONG_MODULE_MARKER."""
  found = []
  for path in sorted(module_files(root, package).values()):
    with open(path) as f:
      text = f.read()
    num_lines = len(text.splitlines())
    if num_lines <= MAX_LINES:
      continue
    docstring = ast.get_docstring(ast.parse(text)) or ''
    if not any(line.strip().startswith(LONG_MODULE_MARKER) for line in docstring.splitlines()):
      found.append(f'{os.path.relpath(path, root)} ({num_lines} lines)')
  return found


def write_package(root, files: Dict[str, str]) -> str:
  for name, text in files.items():
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(textwrap.dedent(text))
  return str(root)


def test_no_import_cycle_among_wysiwyc_modules():
  graph = import_graph(REPO)
  assert 'wysiwyc.train' in graph and 'wysiwyc.evaluation' in graph['wysiwyc.train']
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_no_long_module_without_a_reason_at_its_top():
  problems = long_modules_without_reason(REPO)
  assert not problems, (f'modules over {MAX_LINES} lines: split them, or say why they are one '
                        f'file in a docstring line starting "{LONG_MODULE_MARKER}": {problems}')


def test_cycles_are_found_at_module_and_function_level(tmp_path):
  root = write_package(tmp_path, {
      'pkg/__init__.py': 'from pkg import a\n',
      'pkg/a.py': 'from pkg import b\n',
      'pkg/b.py': 'def f():\n  from pkg.c import g\n',
      'pkg/c.py': 'import pkg.a\ndef g(): pass\n',
      'pkg/d.py': 'from . import a\nfrom .b import f\n'})
  graph = import_graph(root, 'pkg')
  assert graph == {'pkg': {'pkg.a'}, 'pkg.a': {'pkg.b'}, 'pkg.b': {'pkg.c'},
                   'pkg.c': {'pkg.a'}, 'pkg.d': {'pkg.a', 'pkg.b'}}
  assert find_cycle(graph) == ['pkg.a', 'pkg.b', 'pkg.c', 'pkg.a']
  graph['pkg.c'] = set()
  assert find_cycle(graph) is None


def test_long_modules_need_the_marker(tmp_path):
  body = 'x = 1\n' * MAX_LINES
  root = write_package(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/long.py': '"""Long."""\n' + body,
      'pkg/explained.py': f'"""Long.\n\n{LONG_MODULE_MARKER} ...\n"""\n' + body,
      'pkg/short.py': body})
  assert long_modules_without_reason(root, 'pkg') == [f'pkg/long.py ({MAX_LINES + 1} lines)']


FLAG_DEFINITION = re.compile(r"\b(?:flags|config_flags)\.DEFINE_\w+\(\s*['\"](\w+)['\"]")
IN_PROCESS_IMPORT = re.compile(r'^\s*(?:import|from) experiments\.?(\w*)(?: import (\w+))?', re.M)


def experiment_modules_imported_by(path: str) -> Set[str]:
  """The experiments/ modules that the file at `path` imports (directly)."""
  with open(path) as f:
    text = f.read()
  names = set()
  for module, imported in IN_PROCESS_IMPORT.findall(text):
    name = module or imported
    if name and os.path.exists(os.path.join(REPO, 'experiments', f'{name}.py')):
      names.add(name)
  return names


def test_experiment_modules_imported_in_one_test_process_define_each_flag_once():
  # pytest imports the experiment modules of all test files into one worker; absl refuses a
  # flag defined twice (DuplicateFlagError), which fails only whole-suite runs.
  tests_dir = os.path.join(REPO, 'tests')
  loaded = set()
  for name in os.listdir(tests_dir):
    if name.endswith('.py'):
      loaded |= experiment_modules_imported_by(os.path.join(tests_dir, name))
  assert loaded, 'expected the tests to import some experiment modules'
  pending = list(loaded)
  while pending:  # and the experiment modules those import
    module_path = os.path.join(REPO, 'experiments', f'{pending.pop()}.py')
    for name in experiment_modules_imported_by(module_path):
      if name not in loaded:
        loaded.add(name)
        pending.append(name)
  defined_by: Dict[str, List[str]] = {}
  for name in sorted(loaded):
    with open(os.path.join(REPO, 'experiments', f'{name}.py')) as f:
      for flag in FLAG_DEFINITION.findall(f.read()):
        defined_by.setdefault(flag, []).append(name)
  duplicated = {flag: names for flag, names in defined_by.items() if len(names) > 1}
  assert not duplicated, f'flags defined by several in-process experiment modules: {duplicated}'
