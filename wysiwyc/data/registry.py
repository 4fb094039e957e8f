"""The data set registry: how a TFDS data set plugs into the input pipeline, and by what name.

A data set module registers a `DatasetAdapter` under the name that `config.data.name` gives
(`register_dataset`). This module imports no data set, so every data set module can import it;
`wysiwyc.data.catalog` imports them all and looks adapters up by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """Where a standard split's examples come from: TFDS split expression `split` (e.g.
  'train[:-600]') of the builder of registered data set `dataset` (None: the same data set)."""
  split: str
  dataset: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DatasetAdapter:
  """How one TFDS data set plugs into the pipeline.

  make_builder: data_config -> the TFDS builder (not yet prepared; may fail early, with a
    message saying what to fetch, when the data must be downloaded by hand).
  class_names: prepared builder -> class names, in label order.
  to_standard: (raw TFDS example, num_classes) -> {'image' uint8 (H,W,3), 'labels' (C,)
    multi-hot, optional 'class_masks' (H,W,C) in {0,1}, optional 'foreground' (H,W) in {0,1}}.
    Without 'class_masks', each labelled class gets the foreground (all zeros without one);
    without 'foreground', it is the union of the class masks.
  multilabel: False for single-label data sets (softmax cross-entropy; CUB); or prepared
    builder -> that bool, where the data says (a user's folder).
  splits: data_config -> {standard split: SplitSource}; None: the builder's own splits.
  missing: data_config -> problems (what to fetch, where to put it) that stop the builder from
    being prepared here; asked only while it is not prepared. None: nothing can be missing.
  download_config: data_config -> `tfds.download.DownloadConfig` for `download_and_prepare`.
  unmasked_splits: prepared builder -> the standard splits without ground-truth masks (their
    masks are all zero); None: every split that is evaluated has them.
  """
  make_builder: Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]
  class_names: Callable[[tfds.core.DatasetBuilder], Tuple[str, ...]]
  to_standard: Callable[[Dict[str, tf.Tensor], int], Dict[str, tf.Tensor]]
  multilabel: Union[bool, Callable[[tfds.core.DatasetBuilder], bool]] = True
  splits: Optional[Callable[[ml_collections.ConfigDict], Dict[str, SplitSource]]] = None
  missing: Optional[Callable[[ml_collections.ConfigDict], List[str]]] = None
  download_config: Optional[Callable[[ml_collections.ConfigDict], Any]] = None
  unmasked_splits: Optional[Callable[[tfds.core.DatasetBuilder], Tuple[str, ...]]] = None


_ADAPTERS: Dict[str, DatasetAdapter] = {}


def register_dataset(name: str, adapter: DatasetAdapter) -> None:
  """Makes `data_config.name == name` use `adapter`."""
  if name in _ADAPTERS and _ADAPTERS[name] != adapter:
    raise ValueError(f'Data set {name!r} is already registered with another adapter.')
  _ADAPTERS[name] = adapter


def registered() -> Dict[str, DatasetAdapter]:
  """The adapters registered so far, by name (`wysiwyc.data.catalog` holds them all)."""
  return dict(_ADAPTERS)
