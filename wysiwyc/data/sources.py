"""Where the real data sets and weights come from, and what to say when they cannot be had.

Nothing here downloads a data set: TFDS does, inside `download_and_prepare`. These helpers decide
BEFORE that whether it can succeed (the archives are in the manual folder, or their host
answers), so that a machine without network stops at once with a message instead of retrying
for minutes, and nothing is written.

Manual folder: `data_config.manual_dir`, or `<data_dir>/downloads/manual` (TFDS's default), where
TFDS takes an archive whose file name it knows instead of downloading it.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from typing import Dict, Iterable, List, Optional
import urllib.parse
import urllib.request

import tensorflow as tf
import tensorflow_datasets as tfds

# Seconds to wait for a host before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0


def data_dir(data_config) -> str:
  """The TFDS data directory of `data_config` (TFDS's default when unset)."""
  return os.path.expanduser(data_config.get('data_dir', None) or tfds.core.constants.DATA_DIR)


def manual_dir(data_config) -> str:
  """The folder where archives placed by hand are looked for."""
  explicit = data_config.get('manual_dir', None)
  if explicit:
    return os.path.expanduser(explicit)
  return os.path.join(data_dir(data_config), 'downloads', 'manual')


def download_config(data_config) -> tfds.download.DownloadConfig:
  """TFDS download settings: archives are taken from `manual_dir(data_config)` when there."""
  return tfds.download.DownloadConfig(manual_dir=manual_dir(data_config))


def host_reachable(url: str) -> bool:
  """Whether a TCP connection to `url`'s host opens within CONNECT_TIMEOUT_S (remembered per
  URL). With a proxy configured the proxy decides, so the host counts as reachable; with the
  environment variable WYSIWYC_OFFLINE=1 no host does (nothing is ever downloaded)."""
  if os.environ.get('WYSIWYC_OFFLINE', '') not in ('', '0'):
    return False
  return _connects(url)


@functools.lru_cache(maxsize=None)
def _connects(url: str) -> bool:
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme in urllib.request.getproxies():
    return True
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  try:
    with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
      return True
  except OSError:
    return False


def missing_archives_message(what: str, data_config, archives: Dict[str, str],
                             prepared_name: str, notes: str = '') -> Optional[str]:
  """None when every archive (file name -> URL) is in the manual folder or its host answers;
  otherwise what to fetch, where to put it and how to point the config at it."""
  folder = manual_dir(data_config)
  absent = {name: url for name, url in archives.items()
            if not os.path.isfile(os.path.join(folder, name))}
  if all(host_reachable(url) for url in absent.values()):
    return None
  lines = '\n'.join(f'      {name}  ({url})' for name, url in absent.items())
  return (f'{what}: the data set is not prepared in {data_dir(data_config)} and cannot be '
          f'downloaded from here. Put these archives into {folder}:\n{lines}\n'
          f'    (or choose the folder with --config.data.manual_dir=DIR), or copy a folder '
          f'prepared by TFDS elsewhere ({prepared_name}) into the data directory (choose it '
          f'with --config.data.data_dir=DIR).{notes}')


def format_missing(problems: Iterable[str]) -> str:
  """One message for every missing input, each problem on its own paragraph."""
  unique = list(dict.fromkeys(problems))
  return ('This config needs data or weights that are not on this machine, and they cannot be '
          'downloaded from here. Nothing was trained or written.\n\n'
          + '\n\n'.join(f'  - {problem}' for problem in unique))


def download_file(url: str, path: str) -> None:
  """Downloads `url` to `path` through a temporary file (no partial file is left at `path`)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.part')
  os.close(handle)
  try:
    urllib.request.urlretrieve(url, temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def archive_or_download(dl_manager, name: str, url: str) -> str:
  """Path of archive `name` for a builder's `_split_generators`: the copy in the manual folder
  when there (the builder must set MANUAL_DOWNLOAD_INSTRUCTIONS), else downloaded by TFDS
  (cached in the download folder). Not extracted."""
  try:
    local = dl_manager.manual_dir / name
  except (AssertionError, ValueError):  # no manual folder, or an empty one
    local = None
  if local is not None and local.exists():
    return os.fspath(local)
  return os.fspath(dl_manager.download(url))


def multi_hot(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
  """(K,) int class indices (repeats and K = 0 allowed) -> (num_classes,) float32 in {0, 1}."""
  counts = tf.reduce_sum(tf.one_hot(tf.cast(labels, tf.int32), num_classes), axis=0)
  return tf.minimum(counts, 1.0)


def dedupe(items: Iterable[str]) -> List[str]:
  return list(dict.fromkeys(items))
