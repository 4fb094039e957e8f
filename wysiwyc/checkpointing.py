"""Orbax checkpoint helpers shared by training and `wysiwyc.explain`.

Each training stage keeps two managers under its folder: `checkpoints/` (the latest full train
state and loop position, for resuming) and `best/` (the variables with the best validation loss,
what later stages and `wysiwyc.explain` load). Orbax writes each step into a temporary folder and
renames it when complete, so a killed run never leaves a half-written step that looks finished.
"""

import json
import os
from typing import Any, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp


def manager(directory: str, max_to_keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager; `create=False` for read-only use."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False,
                                         read_only=not create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves `state` (a pytree of arrays) and `meta` (JSON) as `step`, replacing an existing one."""
  if step in mngr.all_steps():
    mngr.delete(step)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


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
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Checkpoint step %d in %s is unreadable (%s: %s); falling back to an '
                      'older one.', step, mngr.directory, type(error).__name__, error)
      continue
    return restored['state'], restored['meta'], step
  return None


def read_meta(directory: str) -> Optional[dict]:
  """The JSON metadata of the newest step under `directory`, without reading arrays."""
  if not os.path.isdir(directory):
    return None
  mngr = manager(directory, create=False)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
