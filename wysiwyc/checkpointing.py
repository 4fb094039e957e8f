"""Orbax checkpoint helpers shared by training and `wysiwyc.explain`.

Each training stage keeps two managers under its folder: `checkpoints/` (the latest full train
state and loop position, for resuming) and `best/` (the variables with the best validation loss,
what later stages and `wysiwyc.explain` load). Orbax writes each step into a temporary folder and
renames it when complete, so a killed run never leaves a half-written step that looks finished.
Orbax does not checksum array data, so `save` stores a CRC32 of the state in the step's JSON and
`restore_latest` verifies it: a step whose files were damaged later is skipped, not restored.
"""

import glob
import json
import logging as pylogging
import os
import zlib
from typing import Any, Optional, Tuple

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from wysiwyc import errors

_CHECKSUM_KEY = '_state_crc32'


class _ReadOnlyNotice(pylogging.Filter):
  """Drops orbax's warnings that a manager is read-only (and the options it sets for that):
  `manager(create=False)` opens it so on purpose, and a user of `explain.load` would read them
  as a problem."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    message = record.getMessage()
    return 'Given directory is read only' not in message and 'read_only=True' not in message


pylogging.getLogger('absl').addFilter(_ReadOnlyNotice())


def check_directory(directory: str) -> None:
  """Refuses a folder whose path has glob characters (`[`, `]`, `*`, `?`).

  Orbax finds the per-process parts of a step with a glob on the folder's path, so under such a
  path it saves steps that it can never read back (orbax-checkpoint 0.12.8: in a folder named
  `area=[0.02,0.1]` every step was unreadable, with only a warning at save time).
  """
  if glob.has_magic(directory) or ']' in directory:
    raise errors.UserError(f'{directory!r} contains one of the characters [ ] * ?, under which '
                           'orbax writes checkpoints it cannot read back. Choose a --workdir '
                           'without them.')


def manager(directory: str, max_to_keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager; `create=False` for read-only use.

  Every process must create (and save through) a writing manager together; a read-only one
  waits for no other process (it skips orbax's root-metadata barrier), so process 0 alone may
  read with it.
  """
  check_directory(os.path.abspath(directory))
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False,
                                         read_only=not create, save_root_metadata=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves `state` (a pytree of arrays) and `meta` (JSON) as `step`, replacing an existing one."""
  if step in mngr.all_steps():
    mngr.delete(step)
  checksum = state_checksum(state)
  if checksum is not None:
    meta = {**meta, _CHECKSUM_KEY: checksum}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


def state_checksum(tree: Any) -> Optional[int]:
  """CRC32 of the bytes of every leaf in tree order; None when a leaf is split over processes."""
  crc = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      if not (leaf.is_fully_addressable or leaf.is_fully_replicated):
        return None
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
        leaf = jax.random.key_data(leaf)
    crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).data, crc)
  return crc


def abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> Optional[Tuple[Any, dict, int]]:
  """Restores the newest readable step into the structure of `target`.

  A step that fails to restore (truncated or corrupted files) is reported and skipped, falling
  back to the previous one. Returns None when no step is readable.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract(target)), meta=ocp.args.JsonRestore()))
      meta = dict(restored['meta'])
      expected = meta.pop(_CHECKSUM_KEY, None)
      if expected is not None and expected != state_checksum(restored['state']):
        raise ValueError('the arrays do not match the checksum saved with them (damaged files)')
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Checkpoint step %d in %s is unreadable (%s: %s); falling back to an '
                      'older one.', step, mngr.directory, type(error).__name__, error)
      continue
    return restored['state'], meta, step
  return None


def read_meta(directory: str) -> Optional[dict]:
  """The JSON metadata of the newest step under `directory`, without reading arrays."""
  if not os.path.isdir(directory):
    return None
  mngr = manager(directory, create=False)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      return {k: v for k, v in meta.items() if k != _CHECKSUM_KEY}
    except Exception:  # pylint: disable=broad-except
      continue
  return None


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON through a temporary file and a rename, so readers never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, payload: bytes) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(payload)
  os.replace(tmp, path)
