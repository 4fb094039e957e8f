"""DeepLabV3-ResNet50 explainer: torchvision's architecture sizes, output stride, logits at input
resolution by half-pixel bilinear upsampling, BatchNorm and dropout in training, ImageNet
backbone loading. (A full train step is not compiled here: its backward pass takes over a minute
to compile on a 2-core CPU; the train step itself is tested with the U-Net.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model_helpers import num_params, random_variables, variable_shapes
from tests.test_zoo import _as_flax, _resnet50_layout, _write_h5
from wysiwyc import models

RESNET50_BACKBONE_PARAMS = 23_508_032
# torchvision's DeepLabHead(2048, C): ASPP (1x1, three dilated 3x3, image pooling 1x1, 1x1
# projection of 5*256 channels), a 3x3 conv and the 1x1 classifier; every conv but the last is
# bias-free and followed by BatchNorm (2 parameters per channel, 7 of them).
ASPP_AND_HEAD_PARAMS = (2048 * 256 + 3 * 9 * 2048 * 256 + 2048 * 256 + 5 * 256 * 256
                        + 9 * 256 * 256 + 7 * 2 * 256)
# torchvision lists 42,004,074 parameters for deeplabv3_resnet50 with 21 classes and the
# auxiliary FCNHead(1024, 21) (2,365,205 parameters), which the authors' model does not have.
TORCHVISION_21_CLASSES = 42_004_074 - (9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21)


def small(**kwargs):
  return models.build_explainer('deeplabv3_resnet50', 5, width=8, aspp_features=16, **kwargs)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_parameter_count_is_torchvision_s(output_stride):
  model = models.build_explainer('deeplabv3_resnet50', 21, output_stride=output_stride)
  params = variable_shapes(model)['params']
  assert num_params(params['backbone']) == RESNET50_BACKBONE_PARAMS
  assert num_params(params) == RESNET50_BACKBONE_PARAMS + ASPP_AND_HEAD_PARAMS + 256 * 21 + 21
  assert num_params(params) == TORCHVISION_21_CLASSES


@pytest.mark.parametrize('output_stride,feature_shape', [(8, (5, 6)), (16, (3, 3))])
def test_logits_at_input_resolution_by_bilinear_upsampling(output_stride, feature_shape):
  model = small(output_stride=output_stride)
  variables = random_variables(model, image_size=33)
  images = jax.random.normal(jax.random.key(0), (2, 33, 45, 3))
  logits, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
      variables, images)
  assert logits.shape == (2, 33, 45, 5) and logits.dtype == jnp.float32
  inter = state['intermediates']
  assert inter['backbone']['__call__'][0].shape[1:3] == feature_shape  # output stride
  low = np.asarray(inter['classifier']['__call__'][0], np.float64)
  scale = np.abs(low).max()  # float32 interpolation of values of this size
  np.testing.assert_allclose(logits, _bilinear_half_pixel(low, 33, 45), rtol=1e-5,
                             atol=2e-6 * scale)


def _bilinear_half_pixel(x, height, width):
  """PyTorch's F.interpolate(mode='bilinear', align_corners=False), in numpy."""
  def taps(out_size, in_size):
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(src).astype(int)
    return low, np.minimum(low + 1, in_size - 1), src - low
  r0, r1, wr = taps(height, x.shape[1])
  c0, c1, wc = taps(width, x.shape[2])
  rows = x[:, r0] * (1 - wr)[None, :, None, None] + x[:, r1] * wr[None, :, None, None]
  return rows[:, :, c0] * (1 - wc)[None, None, :, None] + rows[:, :, c1] * wc[None, None, :, None]


def test_training_mode_updates_batch_statistics_and_uses_dropout():
  model = small()
  variables = random_variables(model)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  run = jax.jit(lambda v, x, key: model.apply(v, x, train=True, mutable=['batch_stats'],
                                              rngs={'dropout': key}))
  out_a, updated = run(variables, images, jax.random.key(2))
  out_b, _ = run(variables, images, jax.random.key(3))
  assert np.all(np.isfinite(out_a))
  assert np.abs(np.asarray(out_a) - np.asarray(out_b)).max() > 0  # dropout 0.5 in the ASPP
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                                         updated['batch_stats'], variables['batch_stats']))
  assert all(changed)


def test_imagenet_backbone_comes_from_the_resnet50_file(tmp_path, monkeypatch):
  monkeypatch.setenv('WYSIWYC_OFFLINE', '1')
  model = models.build_explainer('deeplabv3_resnet50', 4, pretrained='imagenet',
                                 ckpt_dir=str(tmp_path))
  assert 'resnet50_weights.h5' in models.missing_pretrained(model)
  values = _write_h5(str(tmp_path / 'flaxmodels' / 'resnet50_weights.h5'), _resnet50_layout())
  assert models.missing_pretrained(model) is None
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variable_shapes(model))
  loaded = models.load_pretrained(model, zeros)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, loaded[collection]['backbone'],
                 _as_flax(values, collection))
  for name in ('aspp', 'head_conv', 'classifier'):
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(loaded['params'][name]))
  assert models.missing_pretrained(models.build_explainer('deeplabv3_resnet50', 4)) is None

