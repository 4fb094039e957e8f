"""DeepLabV3 with a ResNet-50 backbone: the authors' explainer (torchvision's
`deeplabv3_resnet50`), (B,H,W,3) images -> (B,H,W,C) per-class logits at input resolution.

  backbone  ResNet-50 (`zoo.ResNet50Backbone`) with the strides of the last stages replaced by
            dilation: output stride 8 (layers 3 and 4 dilated, torchvision's choice) or 16
  ASPP      1x1 conv, three 3x3 convs dilated by `rates` (12, 24, 36 at stride 8; 6, 12, 18 at
            16), image pooling (global mean, 1x1 conv, broadcast back); each 256 channels with
            BatchNorm and ReLU; concatenated, projected by 1x1 conv + BN + ReLU + dropout 0.5
  head      3x3 conv 256 + BN + ReLU, 1x1 conv to C classes
  output    bilinear upsampling of the logits to the input size (half-pixel centres, PyTorch's
            align_corners=False)

`pretrained='imagenet'` starts the backbone from the ImageNet ResNet-50 weights file (the
classifiers' flaxmodels layout, `wysiwyc.models.zoo`); the whole network is then trained.
torchvision 0.11 (the authors' environment) builds `deeplabv3_resnet50(pretrained=False)` with an
ImageNet backbone (`pretrained_backbone=True` by default); None starts from random weights.
"""

from typing import Any, Dict, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wysiwyc.models import zoo

OUTPUT_STRIDES = {8: ((False, True, True), (12, 24, 36)), 16: ((False, False, True), (6, 12, 18))}


def _conv_bn_relu(x, features: int, kernel: int, dilation: int, train: bool, dtype, name: str):
  pad = dilation * (kernel // 2)
  x = nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
              kernel_dilation=dilation, use_bias=False, dtype=dtype, name=f'{name}_conv')(x)
  x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   name=f'{name}_bn')(x)
  return nn.relu(x)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling."""
  rates: Sequence[int]
  features: int = 256
  dropout: float = 0.5
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, _ = x.shape
    branches = [_conv_bn_relu(x, self.features, 1, 1, train, self.dtype, 'branch0')]
    for i, rate in enumerate(self.rates, start=1):
      branches.append(_conv_bn_relu(x, self.features, 3, rate, train, self.dtype, f'branch{i}'))
    pooled = _conv_bn_relu(x.mean(axis=(1, 2), keepdims=True), self.features, 1, 1, train,
                           self.dtype, 'pooling')
    branches.append(jnp.broadcast_to(pooled, (b, h, w, self.features)))
    x = _conv_bn_relu(jnp.concatenate(branches, axis=-1), self.features, 1, 1, train,
                      self.dtype, 'project')
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class DeepLabV3(nn.Module):
  """DeepLabV3-ResNet50 explainer; see the module docstring."""
  num_classes: int
  output_stride: int = 8
  pretrained: Optional[str] = None
  ckpt_dir: Optional[str] = None
  width: int = 64  # 64 is ResNet-50; smaller only for tests (no pretraining)
  aspp_features: int = 256
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    chex.assert_rank(images, 4)
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f'output_stride={self.output_stride}; choose 8 or 16.')
    dilate, rates = OUTPUT_STRIDES[self.output_stride]
    b, h, w, _ = images.shape
    x = zoo.ResNet50Backbone(self.width, dilate, self.dtype, name='backbone')(images, train)
    x = ASPP(rates, self.aspp_features, dtype=self.dtype, name='aspp')(x, train)
    x = _conv_bn_relu(x, self.aspp_features, 3, 1, train, self.dtype, 'head')
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)
    logits = jax.image.resize(x.astype(jnp.float32), (b, h, w, self.num_classes), 'bilinear',
                              antialias=False)
    chex.assert_shape(logits, (b, h, w, self.num_classes))
    return logits

  @nn.nowrap
  def missing_pretrained(self) -> Optional[str]:
    if zoo.pretraining(self.pretrained) is None:
      return None
    return zoo.missing_weights_message('resnet50', self.ckpt_dir)

  @nn.nowrap
  def load_pretrained(self, variables: Dict[str, Any]) -> Dict[str, Any]:
    if zoo.pretraining(self.pretrained) is None:
      return variables
    return zoo.load_pretrained_backbone(variables, 'resnet50', self.ckpt_dir)
