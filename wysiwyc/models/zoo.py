"""VGG-16 and ResNet-50 pretrained on ImageNet, with the paper's new heads (registered as
classifiers 'vgg16' and 'resnet50').

The backbones read the ImageNet weights that the Flax model zoo `flaxmodels` publishes
(converted from torchvision), in its file layout, from a local folder: `pretrained='imagenet'`
with `ckpt_dir=DIR` looks for `DIR/flaxmodels/<file>` (where `flaxmodels` keeps it) or `DIR/<file>`,
and downloads it from flaxmodels' URL into `DIR/flaxmodels/` only when it is missing and the
host answers. flaxmodels itself is not a dependency: its package pulls in GPT-2 tokenizer code and
a `dataclasses` backport, and its modules re-open the file and may download inside every `setup`,
so a trained workdir could not be loaded without the ImageNet file; the modules here hold the
same layers under the same names and read the file once, before training.

Weight files (HDF5; kernels in Flax layout HWIO, dense matrices (in, out)):
  vgg16_weights.h5     groups conv1_1 .. conv5_3 (and fc6 .. fc8), each with 'weight', 'bias'
  resnet50_weights.h5  conv1/weight; bn1/{scale,bias,mean,var};
                       layer{1..4}/block{i}/{conv1,conv2,conv3}/weight, .../{bn1,bn2,bn3}/{...},
                       layer{1..4}/block0/downsample/{conv/weight, bn/{...}}; fc/{weight,bias}
Only the backbone is read (the 1000-class layers are replaced by the new head).

The paper's classifiers (DESIGN.md section 1), on ImageNet-normalized inputs:
  vgg16     conv layers -> 5th max pool (the `features`, (B,H/32,W/32,512)) -> adaptive average
            pool to 7x7 -> flatten in torchvision's (C,H,W) order -> 25088-4096-4096-C, ReLU and
            dropout 0.5 between (`head`)
  resnet50  torchvision's ResNet-50 v1.5 up to layer4 (the `features`, (B,H/32,W/32,2048)) ->
            global average pool -> 2048-C (`head`)
The backbone's parameters live under 'backbone', the new head's under 'head': the classifier
stage's `trainable='head'` trains only the head. ResNet's BatchNorm statistics stay frozen
(inference mode) unless `update_batch_stats=True`.

Longer than 400 lines because the layers and the weight-file reader share the file layout above:
a layer's name is the group the reader looks up, so the two change together.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional, Tuple

import chex
import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from wysiwyc import errors
from wysiwyc.models import classifiers
from wysiwyc.models import layers

ARCHITECTURES = ('vgg16', 'resnet50')
WEIGHT_FILES = {'vgg16': 'vgg16_weights.h5', 'resnet50': 'resnet50_weights.h5'}
# The URLs flaxmodels 0.1.3 downloads from (flaxmodels/vgg/vgg.py, flaxmodels/resnet/resnet.py).
WEIGHT_URLS = {
    'vgg16': 'https://www.dropbox.com/s/ew3vhtlg5kks8mz/vgg16_weights.h5?dl=1',
    'resnet50': 'https://www.dropbox.com/s/fcc8iii38ezvqog/resnet50_weights.h5?dl=1',
}
DEFAULT_CKPT_DIR = os.path.join('~', '.cache', 'wysiwyc', 'weights')
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
RESNET50_BLOCKS = (3, 4, 6, 3)


# ------------------------------------------------------------------------------- weight files


def weight_file_candidates(architecture: str, ckpt_dir: Optional[str]) -> Tuple[str, str]:
  """Where a weights file is looked for: flaxmodels' own place first, then the folder itself."""
  root = os.path.expanduser(ckpt_dir or DEFAULT_CKPT_DIR)
  name = WEIGHT_FILES[architecture]
  return os.path.join(root, 'flaxmodels', name), os.path.join(root, name)


def find_weight_file(architecture: str, ckpt_dir: Optional[str]) -> Optional[str]:
  for path in weight_file_candidates(architecture, ckpt_dir):
    if os.path.isfile(path):
      return path
  return None


def missing_weights_message(architecture: str, ckpt_dir: Optional[str]) -> Optional[str]:
  """None when the ImageNet weights of `architecture` are on disk or can be downloaded now;
  otherwise what to fetch, where to put it and how to point the config at it."""
  from wysiwyc.data import sources  # pylint: disable=g-import-not-at-top
  if find_weight_file(architecture, ckpt_dir) or sources.host_reachable(
      WEIGHT_URLS[architecture]):
    return None
  target = weight_file_candidates(architecture, ckpt_dir)[0]
  url = WEIGHT_URLS[architecture]
  return (f'ImageNet weights of {architecture} (flaxmodels layout): {WEIGHT_FILES[architecture]} '
          f'is not in {os.path.dirname(target)} and {url.split("/")[2]} cannot be reached. '
          f'Download {url} on a machine with network, put it at {target}, or point the config '
          f"at another folder with --config.weights_dir=DIR (the file at DIR/flaxmodels/ or "
          f"DIR/), or start from random weights with pretrained=None in the model's kwargs.")


def ensure_weight_file(architecture: str, ckpt_dir: Optional[str]) -> str:
  """The local weights file; downloads it (as flaxmodels would) when missing and reachable."""
  path = find_weight_file(architecture, ckpt_dir)
  if path:
    return path
  problem = missing_weights_message(architecture, ckpt_dir)
  if problem:
    raise errors.UserError(problem)
  from wysiwyc.data import sources  # pylint: disable=g-import-not-at-top
  target = weight_file_candidates(architecture, ckpt_dir)[0]
  sources.download_file(WEIGHT_URLS[architecture], target)
  return target


def read_weight_file(path: str, skip: Tuple[str, ...] = ()) -> Dict[str, Any]:
  """A flaxmodels weights file -> {'params': ..., 'batch_stats': ...} nested dicts of numpy
  arrays, with Flax names: 'weight' -> 'kernel'; BatchNorm 'mean'/'var' -> batch_stats.
  Top-level groups whose name starts with one of `skip` are not read."""
  import h5py  # pylint: disable=g-import-not-at-top
  params, stats = {}, {}

  def walk(group, param_node, stats_node):
    for name, item in group.items():
      if group.name == '/' and name.startswith(skip):
        continue
      if isinstance(item, h5py.Group):
        walk(item, param_node.setdefault(name, {}), stats_node.setdefault(name, {}))
      elif name in ('mean', 'var'):
        stats_node[name] = np.asarray(item[()], np.float32)
      else:
        param_node['kernel' if name == 'weight' else name] = np.asarray(item[()], np.float32)

  try:
    with h5py.File(path, 'r') as f:
      walk(f, params, stats)
  except OSError as error:
    raise errors.UserError(f'{path} is not a readable HDF5 weights file ({error}). Download it '
                           'again.') from error
  prune = lambda tree: {k: prune(v) if isinstance(v, dict) else v for k, v in tree.items()
                        if not isinstance(v, dict) or prune(v)}
  return {'params': prune(params), 'batch_stats': prune(stats)}


def write_weight_file(path: str, variables: Dict[str, Any]) -> None:
  """Writes backbone `variables` ({'params', optional 'batch_stats'}) in flaxmodels' layout:
  the inverse of `read_weight_file` (to export a backbone, e.g. to start another run from it)."""
  import h5py  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with h5py.File(path, 'w') as f:
    for collection in ('params', 'batch_stats'):
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get(collection, {})))
      for keys, value in flat.items():
        keys = keys[:-1] + ('weight' if keys[-1] == 'kernel' else keys[-1],)
        f.create_dataset('/'.join(keys), data=np.asarray(value, np.float32))


def put_backbone_weights(variables: Dict[str, Any], weights: Dict[str, Any], path: str,
                         prefix: Tuple[str, ...] = ('backbone',)) -> Dict[str, Any]:
  """`variables` with every leaf under `prefix` replaced by the matching leaf of `weights`
  (laid out like the backbone). Leaves of `weights` the backbone lacks (the ImageNet head) are
  ignored; a backbone leaf missing from `weights` or of another shape is an error."""
  out = {}
  for collection, tree in variables.items():
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    source = flax.traverse_util.flatten_dict(weights.get(collection, {}))
    for keys, value in flat.items():
      if keys[:len(prefix)] != prefix:
        continue
      key = keys[len(prefix):]
      if key not in source:
        raise errors.UserError(f'{path} has no {collection} {"/".join(key)}: it is not a weights '
                               'file of this architecture.')
      if tuple(source[key].shape) != tuple(value.shape):
        raise errors.UserError(
            f'{path}: {collection} {"/".join(key)} has shape {source[key].shape}, the model '
            f'{tuple(value.shape)} (pretrained weights need the standard width).')
      flat[keys] = jnp.asarray(source[key], dtype=value.dtype)
    out[collection] = flax.traverse_util.unflatten_dict(flat)
  return out


def load_pretrained_backbone(variables: Dict[str, Any], architecture: str,
                             ckpt_dir: Optional[str]) -> Dict[str, Any]:
  """`variables` whose 'backbone' holds the ImageNet weights of `architecture`."""
  path = ensure_weight_file(architecture, ckpt_dir)
  # The ImageNet classifier layers (VGG's fc6-fc8 hold 120M numbers) are not needed.
  return put_backbone_weights(variables, read_weight_file(path, skip=('fc',)), path)


def pretraining(pretrained: Optional[str]) -> Optional[str]:
  """'imagenet' or None; '' and 'none' (as a command line gives them) mean None."""
  if pretrained is None or str(pretrained).lower() in ('', 'none'):
    return None
  if pretrained != 'imagenet':
    raise errors.UserError(f"pretrained={pretrained!r}; choose 'imagenet' or None.")
  return pretrained


# ------------------------------------------------------------------------------------ layers


def max_pool_2x2_floor(x: jnp.ndarray) -> jnp.ndarray:
  """2x2/stride-2 max pooling that drops an odd last row/column (PyTorch's MaxPool2d(2, 2))."""
  _, h, w, _ = x.shape
  return layers.max_pool_2x2(x[:, :h - h % 2, :w - w % 2])


def adaptive_average_pool(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """(B,H,W,C) -> (B,size,size,C) with PyTorch's AdaptiveAvgPool2d bins: output i averages input
  rows floor(i*H/size) .. ceil((i+1)*H/size)-1 (a copy of rows when H < size)."""
  def bins(n):
    matrix = np.zeros((size, n), np.float32)
    for i in range(size):
      start, end = (i * n) // size, -((-(i + 1) * n) // size)
      matrix[i, start:end] = 1.0 / (end - start)
    return matrix
  _, h, w, _ = x.shape
  if h == size and w == size:
    return x
  return jnp.einsum('ih,jw,bhwc->bijc', bins(h), bins(w), x.astype(jnp.float32)).astype(x.dtype)


class VGG16Backbone(nn.Module):
  """VGG-16's 13 convolutions (named as in the weights file) and 5 max pools."""
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x):
    for block, (features, num_layers) in enumerate(VGG16_BLOCKS, start=1):
      for layer in range(1, num_layers + 1):
        x = nn.relu(nn.Conv(features, (3, 3), padding=1, dtype=self.dtype,
                            name=f'conv{block}_{layer}')(x))
      x = max_pool_2x2_floor(x)
    return x


class _Downsample(nn.Module):
  features: int
  stride: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (1, 1), strides=self.stride, use_bias=False, dtype=self.dtype,
                name='conv')(x)
    return _batch_norm(train, self.dtype, 'bn')(x)


def _batch_norm(train: bool, dtype, name: str) -> nn.Module:
  # PyTorch's BatchNorm2d: eps 1e-5, running averages with momentum 0.1 (Flax: 0.9).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck: the stride (or dilation) is on the 3x3 convolution."""
  features: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    d = self.dilation
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(conv(self.features, (1, 1),
                                                           name='conv1')(x)))
    y = conv(self.features, (3, 3), strides=self.stride, padding=((d, d), (d, d)),
             kernel_dilation=d, name='conv2')(y)
    y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(y))
    y = _batch_norm(train, self.dtype, 'bn3')(conv(4 * self.features, (1, 1), name='conv3')(y))
    if self.downsample:
      x = _Downsample(4 * self.features, self.stride, self.dtype, name='downsample')(x, train)
    return nn.relu(y + x)


class _ResNetStage(nn.Module):
  features: int
  num_blocks: int
  stride: int
  first_dilation: int
  dilation: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_blocks):
      x = Bottleneck(self.features, stride=self.stride if i == 0 else 1,
                     dilation=self.first_dilation if i == 0 else self.dilation,
                     downsample=i == 0, dtype=self.dtype, name=f'block{i}')(x, train)
    return x


class ResNet50Backbone(nn.Module):
  """ResNet-50 up to layer4 (B,H/s,W/s,8*width*4), s = 32 / prod of the dilated strides.

  `dilate[k]` replaces the stride of layer k+2 by dilation, as torchvision's
  `replace_stride_with_dilation` (DeepLabV3 uses (False, True, True): output stride 8).
  `train` puts BatchNorm in training mode (batch statistics, running averages updated).
  """
  width: int = 64
  dilate: Tuple[bool, bool, bool] = (False, False, False)
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype,
                name='conv1')(x)
    x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    dilation = 1
    for stage, num_blocks in enumerate(RESNET50_BLOCKS):
      stride = 1 if stage == 0 else 2
      first_dilation = dilation
      if stage > 0 and self.dilate[stage - 1]:
        dilation *= stride
        stride = 1
      x = _ResNetStage(self.width * 2 ** stage, num_blocks, stride, first_dilation, dilation,
                       self.dtype, name=f'layer{stage + 1}')(x, train)
    return x


# --------------------------------------------------------------------------------- classifiers


class VGGHead(nn.Module):
  num_classes: int
  width: int = 4096
  pooled_size: int = 7
  dropout: float = 0.5
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = adaptive_average_pool(features, self.pooled_size)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torchvision's flatten order
    for i in (1, 2):
      x = nn.relu(nn.Dense(self.width, dtype=self.dtype, name=f'fc{i}')(x))
      x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc3')(x)


class VGG16Classifier(nn.Module):
  """VGG-16 (ImageNet backbone) with the paper's 25088-4096-4096-C head."""
  num_classes: int
  pretrained: Optional[str] = 'imagenet'
  ckpt_dir: Optional[str] = None
  head_width: int = 4096
  pooled_size: int = 7
  dropout: float = 0.5
  dtype: Optional[Any] = None

  def setup(self):
    pretraining(self.pretrained)
    self.backbone = VGG16Backbone(self.dtype)
    self.head = VGGHead(self.num_classes, self.head_width, self.pooled_size, self.dropout,
                        self.dtype)

  def features(self, images, train: bool = False):
    """The 5th max pool's output (B,H/32,W/32,512)."""
    del train  # No BatchNorm or dropout in VGG-16's convolutional part.
    chex.assert_rank(images, 4)
    return self.backbone(images)

  def logits_from_features(self, features, train: bool = False):
    logits = self.head(features, train).astype(jnp.float32)
    chex.assert_shape(logits, (features.shape[0], self.num_classes))
    return logits

  def __call__(self, images, train: bool = False):
    return self.logits_from_features(self.features(images, train), train)

  @nn.nowrap
  def missing_pretrained(self) -> Optional[str]:
    if pretraining(self.pretrained) is None:
      return None
    return missing_weights_message('vgg16', self.ckpt_dir)

  @nn.nowrap
  def load_pretrained(self, variables: Dict[str, Any]) -> Dict[str, Any]:
    if pretraining(self.pretrained) is None:
      return variables
    return load_pretrained_backbone(variables, 'vgg16', self.ckpt_dir)


class ResNet50Classifier(nn.Module):
  """ResNet-50 (ImageNet backbone) with the paper's 2048-C head."""
  num_classes: int
  pretrained: Optional[str] = 'imagenet'
  ckpt_dir: Optional[str] = None
  update_batch_stats: bool = False  # False: the frozen backbone's BatchNorm in inference mode
  width: int = 64                   # 64 is ResNet-50; smaller only for tests (no pretraining)
  dtype: Optional[Any] = None

  def setup(self):
    pretraining(self.pretrained)
    self.backbone = ResNet50Backbone(self.width, dtype=self.dtype)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images, train: bool = False):
    """layer4's output (B,H/32,W/32,2048)."""
    chex.assert_rank(images, 4)
    return self.backbone(images, train=train and self.update_batch_stats)

  def logits_from_features(self, features, train: bool = False):
    del train
    logits = self.head(features.mean(axis=(1, 2))).astype(jnp.float32)
    chex.assert_shape(logits, (features.shape[0], self.num_classes))
    return logits

  def __call__(self, images, train: bool = False):
    return self.logits_from_features(self.features(images, train), train)

  @nn.nowrap
  def missing_pretrained(self) -> Optional[str]:
    if pretraining(self.pretrained) is None:
      return None
    return missing_weights_message('resnet50', self.ckpt_dir)

  @nn.nowrap
  def load_pretrained(self, variables: Dict[str, Any]) -> Dict[str, Any]:
    if pretraining(self.pretrained) is None:
      return variables
    return load_pretrained_backbone(variables, 'resnet50', self.ckpt_dir)


@classifiers.register('vgg16')
def vgg16(num_classes: int, **kwargs) -> nn.Module:
  return VGG16Classifier(num_classes=num_classes, **kwargs)


@classifiers.register('resnet50')
def resnet50(num_classes: int, **kwargs) -> nn.Module:
  return ResNet50Classifier(num_classes=num_classes, **kwargs)


def trainable_labels(params, trainable: str) -> Any:
  """'train'/'frozen' per leaf of `params`: 'all' trains everything; 'head' trains the top-level
  subtrees whose name starts with 'head' (the new head of the zoo classifiers and SimpleCNN)."""
  if trainable == 'all':
    return flax.traverse_util.path_aware_map(lambda path, _: 'train', params)
  if trainable != 'head':
    raise errors.UserError(f"classifier.trainable={trainable!r}; choose 'all' or 'head'.")
  if not any(str(name).startswith('head') for name in params):
    raise errors.UserError("classifier.trainable='head' but the classifier has no parameters "
                           f"named 'head*' (top level: {', '.join(map(str, params))}).")
  return flax.traverse_util.path_aware_map(
      lambda path, _: 'train' if str(path[0]).startswith('head') else 'frozen', params)

