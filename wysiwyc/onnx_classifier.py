"""An ONNX file as the frozen classifier (`classifier.onnx=PATH`): loaded as a JAX function of
the pipeline's images, checked before a run writes, and recorded in the workdir by its sha256.

The pipeline's images are NHWC float32, ImageNet-normalized (`wysiwyc.explain.normalize`); the
config's convention fields say what the ONNX model takes instead and what it returns:
- `onnx_layout`: 'NCHW' (torch.onnx.export), 'NHWC', or 'auto' (read from the graph's input:
  the axis of size 3);
- `onnx_normalization`: 'imagenet' (`(x/255 - mean)/std`, torchvision's Normalize), 'unit'
  (x/255 in [0,1], ToTensor without Normalize) or 'pixels' (0..255);
- `onnx_outputs`: 'logits', or 'probabilities' (sigmoid or softmax outputs, turned back into
  logits; single- or multi-label follows the data set, as for any classifier).
The `onnx` package is needed only when a path is given (`pip install 'wysiwyc[onnx]'`).
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc import errors
from wysiwyc import onnx_import
from wysiwyc.attribution.common import IMAGENET_MEAN, IMAGENET_STD

LAYOUTS = ('auto', 'NCHW', 'NHWC')
NORMALIZATIONS = ('imagenet', 'unit', 'pixels')
OUTPUTS = ('logits', 'probabilities')
# `<workdir>/classifier/RECORD`: what the Explainer was trained against (path, sha256, ...).
RECORD = 'onnx.json'
PREFIX = 'onnx:'  # `wysiwyc.api.load_classifier('onnx:PATH')`


def config_fields() -> Dict[str, str]:
  """The `config.classifier` fields of an ONNX classifier, with their defaults: a config file
  adds them with `config.classifier.update(onnx_classifier.config_fields())`."""
  return {'onnx': '', 'onnx_layout': 'auto', 'onnx_normalization': 'imagenet',
          'onnx_outputs': 'logits'}


def path_of(config) -> str:
  """`config.classifier.onnx`, '' when unset or absent."""
  return config.classifier.get('onnx', '') or ''


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _choice(value: str, choices, field: str) -> str:
  if value not in choices:
    raise errors.UserError(f'classifier.{field}={value!r}; choose one of {", ".join(choices)}.')
  return value


def read_model(path: str, field: str = 'classifier.onnx'):
  """The `onnx.ModelProto` at `path`; a missing package or file, or an unreadable one, is a
  one-line `UserError` naming `field`."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(f"{field}={path!r} needs the onnx package: pip install "
                           "'wysiwyc[onnx]' (or pip install onnx).") from None
  if not os.path.isfile(path):
    raise errors.UserError(f'{field}={path!r}: no such file; give the path of an .onnx file.')
  try:
    return onnx.load(path)
  except Exception as error:  # pylint: disable=broad-except  (not an ONNX file)
    raise errors.UserError(f'{field}={path!r} is not a readable ONNX file '
                           f'({type(error).__name__}).') from None


def class_names(path: str) -> Optional[Tuple[str, ...]]:
  """The model's metadata 'class_names' (a JSON list, as `wysiwyc.onnx_export` writes it), else
  'class_0', 'class_1', ... from its output's static size; None when neither says."""
  model = read_model(path)
  props = {p.key: p.value for p in model.metadata_props}
  if 'class_names' in props:
    try:
      names = json.loads(props['class_names'])
    except ValueError:
      names = None
    if isinstance(names, list) and names:
      return tuple(str(n) for n in names)
  dims = onnx_import.output_shapes(model)[0] if model.graph.output else ()
  if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 0:
    return tuple(f'class_{i}' for i in range(dims[1]))
  return None


def _layout(shape: tuple, layout: str, path: str) -> str:
  if len(shape) != 4:
    raise errors.UserError(f'{path}: the model takes an input of shape {shape}; an image '
                           'classifier takes (batch, 3, H, W) or (batch, H, W, 3).')
  if layout != 'auto':
    return layout
  if shape[1] == 3 and shape[3] != 3:
    return 'NCHW'
  if shape[3] == 3 and shape[1] != 3:
    return 'NHWC'
  raise errors.UserError(f'{path}: cannot tell the layout of input shape {shape}; set '
                         '--config.classifier.onnx_layout=NCHW or NHWC.')


def _describe_shape(shape: tuple) -> str:
  return '(' + ','.join(str(d) if isinstance(d, int) else (d or '?') for d in shape) + ')'


@dataclasses.dataclass(frozen=True)
class Loaded:
  """An ONNX classifier: `apply_fn(variables, images) -> logits` on the pipeline's images,
  its `variables` ({'params': {initializer name: array}}) and what was loaded (`description`)."""
  apply_fn: Callable
  variables: dict
  description: dict


def load(path: str, layout: str = 'auto', normalization: str = 'imagenet',
         outputs: str = 'logits', multilabel: bool = True,
         field: str = 'classifier.onnx') -> Loaded:
  """The ONNX classifier at `path` with the given input convention (module docstring)."""
  _choice(layout, LAYOUTS, 'onnx_layout')
  _choice(normalization, NORMALIZATIONS, 'onnx_normalization')
  _choice(outputs, OUTPUTS, 'onnx_outputs')
  converted, digest = _converted(path, field)
  if len(converted.input_names) != 1:
    raise errors.UserError(f'{field}={path!r}: the model takes {len(converted.input_names)} '
                           f'inputs {converted.input_names}; an image classifier takes one.')
  shape = converted.input_shapes[0]
  layout = _layout(shape, layout, path)
  mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)

  def apply_fn(variables, images):
    x = images
    if normalization != 'imagenet':
      x = x * std + mean
      if normalization == 'pixels':
        x = x * 255.0
    if layout == 'NCHW':
      x = jnp.transpose(x, (0, 3, 1, 2))
    y = converted.apply(variables['params'], x)[0]
    if outputs == 'probabilities':
      p = jnp.clip(y, 1e-7, 1 - 1e-7)
      y = jnp.log(p) - jnp.log1p(-p) if multilabel else jnp.log(p)
    return y

  params = converted.params
  description = {
      'path': os.path.abspath(path), 'sha256': digest, 'opset': converted.opset,
      'input_shape': _describe_shape(shape), 'layout': layout, 'normalization': normalization,
      'outputs': outputs, 'num_parameters': int(sum(a.size for a in params.values()))}
  return Loaded(apply_fn, {'params': dict(params)}, description)


def _converted(path: str, field: str):
  """(`onnx_import.convert` of the file, its sha256), read once per version of the file: the
  checks before a run and the classifier stage each load it, and a classifier file may hold
  hundreds of megabytes."""
  try:
    stat = os.stat(path)
    version = (stat.st_mtime_ns, stat.st_size)
  except OSError:
    version = None  # read_model says what is wrong
  return _read_and_convert(path, version, field)


@functools.lru_cache(maxsize=2)
def _read_and_convert(path: str, version, field: str):
  del version  # the cache key: a file rewritten since is read again
  model = read_model(path, field)
  try:
    converted = onnx_import.convert(model)
  except errors.UserError as error:
    raise errors.UserError(f'{field}={path!r}: {error}') from None
  return converted, sha256(path)


def from_config(config, multilabel: bool) -> Loaded:
  """`load` of `config.classifier.onnx` with the config's convention fields."""
  c = config.classifier
  return load(path_of(config), c.get('onnx_layout', 'auto'),
              c.get('onnx_normalization', 'imagenet'), c.get('onnx_outputs', 'logits'),
              multilabel)


def check(loaded: Loaded, image_size: int, num_classes: int, path: str) -> None:
  """A `UserError` when the model does not take (B,3,S,S) images of the config's size or does
  not return (B, num_classes); runs no arrays (`jax.eval_shape`)."""
  shape = loaded.description['input_shape'].strip('()').split(',')
  sides = shape[2:] if loaded.description['layout'] == 'NCHW' else shape[1:3]
  if any(side.isdigit() and int(side) != image_size for side in sides):
    raise errors.UserError(f'{path}: the model takes images of {"x".join(sides)} pixels, the '
                           f'config {image_size}; set --config.data.image_size to match.')
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  try:
    logits = jax.eval_shape(loaded.apply_fn, loaded.variables, images)
  except errors.UserError as error:
    raise errors.UserError(f'{path}: {error}') from None
  except Exception as error:  # pylint: disable=broad-except  (a graph that does not fit)
    message = str(error).strip().splitlines()
    raise errors.UserError(f'{path}: the model does not run on images of shape (2,{image_size},'
                           f'{image_size},3) ({type(error).__name__}: '
                           f'{message[0] if message else ""}).') from None
  if getattr(logits, 'shape', None) != (2, num_classes):
    raise errors.UserError(f'{path}: the model returns shape {getattr(logits, "shape", None)} '
                           f'for 2 images; the data set has {num_classes} classes, so it must '
                           f'return (2,{num_classes}).')


def stage_line(description: dict) -> str:
  """The classifier stage's console line of an ONNX classifier."""
  d = description
  return (f"classifier: ONNX {d['path']} (opset {d['opset']}, input {d['input_shape']} "
          f"{d['layout']}, {d['normalization']}-normalized, {d['outputs']}, "
          f"{d['num_parameters']:,} parameters), not trained")


def record_path(workdir: str) -> str:
  return os.path.join(workdir, 'classifier', RECORD)


def read_record(workdir: str) -> Optional[dict]:
  path = record_path(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_unchanged(workdir: str, path: str, retrained=()) -> None:
  """Refuses, before a run writes, a workdir whose Explainer was trained against an ONNX file
  that has changed since (another sha256), unless its classifier stage is retrained."""
  record = read_record(workdir)
  if record is None or 'classifier' in retrained or not os.path.isfile(path):
    return
  now = sha256(path)
  if now != record['sha256']:
    raise errors.UserError(
        f"{workdir} was trained against the ONNX file {record['path']} with sha256 "
        f"{record['sha256'][:16]}..; {path} now has {now[:16]}.. (the file changed). Nothing was "
        'written. Use a new --workdir, or --retrain=classifier to train the Explainer again '
        'against the file as it is now, or restore the file.')


def load_recorded(workdir: str, config, multilabel: bool) -> Loaded:
  """The ONNX classifier a workdir was trained against, for `wysiwyc.explain.load`: the file at
  its recorded path, refused in one line when it is missing or has another sha256."""
  record = read_record(workdir)
  if record is None:
    raise errors.UserError(f'{workdir} has no classifier record ({record_path(workdir)} is '
                           'missing). Train it first: python -m wysiwyc.main --config=<config> '
                           f'--workdir={workdir}')
  path = record['path']
  if not os.path.isfile(path) or sha256(path) != record['sha256']:
    state = 'is missing' if not os.path.isfile(path) else 'has changed (another sha256)'
    raise errors.UserError(
        f"{workdir} was trained against the ONNX file {path} (sha256 {record['sha256'][:16]}..), "
        f'which {state}: put that file back, or train a new workdir against the new one.')
  c = config.classifier
  return load(path, record.get('layout', c.get('onnx_layout', 'auto')),
              c.get('onnx_normalization', 'imagenet'), c.get('onnx_outputs', 'logits'),
              multilabel)
