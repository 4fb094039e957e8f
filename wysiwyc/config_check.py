"""The config files of configs/ and the mistakes made naming them, without absl flags.

What `--help` lists (each config file, its first phrase and its variants, read without running
the file) and the one-line messages for a config file, variant or field that does not exist.
Kept apart from `wysiwyc.main`, which defines the process's flags, so that other programs and
the tests can use it.
"""

import ast
import difflib
import importlib.util
import os
import re
from typing import List, Optional, Sequence, Tuple

from wysiwyc import errors

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def config_module(name: str, folder: str = CONFIGS_DIR):
  """`configs/<name>.py` loaded by path, as `--config=configs/<name>.py` loads it (configs/ is
  no package): its `get_config` and variant functions."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', os.path.join(folder,
                                                                              f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_catalog(folder: str = CONFIGS_DIR) -> List[Tuple[str, str, Tuple[str, ...]]]:
  """(file name, first phrase of its docstring, variants) of each config file in `folder`, read
  with `ast` (without running the files, which load TensorFlow)."""
  catalog = []
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if not name.endswith('.py') or name.startswith('_'):
      continue
    with open(os.path.join(folder, name)) as f:
      module = ast.parse(f.read())
    summary = re.split(r'[.:](?:\s|$)', (ast.get_docstring(module) or '').replace('\n', ' '))[0]
    catalog.append((name, summary, _variant_names(module)))
  return catalog


def _variant_names(module: ast.Module) -> Tuple[str, ...]:
  """The string keys (dict) or items (tuple, list) of a module's `VARIANTS = ...` assignment."""
  for node in module.body:
    if (isinstance(node, ast.Assign) and
        any(isinstance(t, ast.Name) and t.id == 'VARIANTS' for t in node.targets)):
      items = node.value.keys if isinstance(node.value, ast.Dict) else getattr(
          node.value, 'elts', [])
      return tuple(sorted(i.value for i in items
                          if isinstance(i, ast.Constant) and isinstance(i.value, str)))
  return ()


def check_config_arg(config_arg: str, folder: str = CONFIGS_DIR) -> None:
  """Refuses a config file that does not exist, and a variant that a config file of `folder`
  does not define (naming the closest one); other config files check their own variants."""
  path, _, arg = config_arg.partition(':')
  catalog = config_catalog(folder)
  if not os.path.isfile(path):
    names = ', '.join(os.path.join(os.path.relpath(folder), name) for name, _, _ in catalog)
    raise errors.UserError(f'no config file {path}; the config files are {names}.')
  variants = {name: variants for name, _, variants in catalog}.get(os.path.basename(path))
  if os.path.abspath(os.path.dirname(path)) != os.path.abspath(folder) or not variants:
    return
  for variant in filter(None, arg.split(',')):
    if variant not in variants:
      raise errors.UserError(
          f'unknown config variant {variant} of {path}{_did_you_mean(variant, variants)} '
          f'(variants: {", ".join(variants)}; comma-separated to combine).')


def unknown_config_field(config, field: str) -> Optional[str]:
  """Why `field` (dotted, as in --config.FIELD=...) is not in `config`, or None if it is."""
  node, parts = config, field.split('.')
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      prefix = '.'.join(parts[:i])
      choices = [f'{prefix}.{key}' if prefix else key for key in keys]
      return f'unknown config field {".".join(parts[:i + 1])}' + _did_you_mean(
          '.'.join(parts[:i + 1]), choices)
    node = node[part]
  return None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(word, choices, n=1)
  return f'; did you mean {close[0]}?' if close else ''
