"""Tests of the Flax modules: shapes, and the hand-written ops against the stock Flax ones."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wysiwyc import models
from wysiwyc.models import classifiers
from wysiwyc.models import layers


def test_max_pool_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  np.testing.assert_allclose(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


def test_upsample_equals_strided_transposed_conv():
  """Dense to 4C + depth-to-space is a 2x2/stride-2 transposed convolution."""
  x = jax.random.normal(jax.random.key(1), (1, 3, 4, 5))
  up = layers.Upsample2x(features=2)
  params = up.init(jax.random.key(2), x)['params']
  kernel = params['Dense_0']['kernel'].reshape(5, 2, 2, 2)  # (Cin, dy, dx, Cout)
  bias = np.asarray(params['Dense_0']['bias']).reshape(2, 2, 2)
  got = up.apply({'params': params}, x)
  expected = np.zeros((1, 6, 8, 2))
  xs = np.asarray(x)
  for i in range(3):
    for j in range(4):
      for dy in range(2):
        for dx in range(2):
          expected[0, 2 * i + dy, 2 * j + dx] = (xs[0, i, j] @ np.asarray(kernel[:, dy, dx])
                                                 + bias[dy, dx])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape,norm', [((2, 32, 32), 'group'), ((1, 30, 45), 'batch'),
                                        ((1, 7, 9), 'none')])
def test_unet_logits_at_input_resolution(shape, norm):
  unet = models.build_explainer('unet', 5, width=4, depth=2, norm=norm)
  x = jnp.zeros(shape + (3,))
  variables = unet.init(jax.random.key(0), x)
  out = unet.apply(variables, x)
  assert out.shape == shape + (5,)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_unet_logit_scale_multiplies_the_logits_of_the_same_parameters():
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  plain = models.build_explainer('unet', 4, width=4, depth=2, norm='batch')
  scaled = models.build_explainer('unet', 4, width=4, depth=2, norm='batch', logit_scale=10.0)
  variables = plain.init(jax.random.key(0), x)
  np.testing.assert_allclose(scaled.apply(variables, x), 10.0 * plain.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


def test_space_to_depth_inverts_depth_to_space():
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
  folded = layers.space_to_depth_2x(x)
  assert folded.shape == (2, 3, 2, 12)
  np.testing.assert_array_equal(folded[1, 2, 1].reshape(2, 2, 3), x[1, 4:6, 2:4])
  np.testing.assert_array_equal(layers.depth_to_space_2x(folded), x)


@pytest.mark.parametrize('shape', [(2, 32, 32), (1, 30, 45), (1, 7, 9)])
def test_half_resolution_unet_gives_smooth_logits_at_input_resolution(shape):
  unet = models.build_explainer('unet', 5, width=4, depth=2, input_stride=2)
  x = jax.random.normal(jax.random.key(1), shape + (3,))
  variables = unet.init(jax.random.key(0), x)
  out = unet.apply(variables, x)
  assert out.shape == shape + (5,)
  assert np.all(np.isfinite(out))
  # The first convolution sees 2x2 pixel patches folded into 12 channels.
  assert variables['params']['ConvBlock_0']['Conv_0']['kernel'].shape[2] == 12
  with pytest.raises(ValueError, match='input_stride'):
    models.build_explainer('unet', 5, input_stride=4).init(jax.random.key(0), x)


def test_stem_stride_halves_the_classifier_feature_map():
  x = jnp.zeros((1, 32, 30, 3))
  for stride, expected in [(1, (1, 16, 15, 8)), (2, (1, 8, 8, 8))]:
    model = classifiers.build('simple_cnn', 3, width=4, depth=2, stem_stride=stride)
    variables = model.init(jax.random.key(0), x)
    features = model.apply(variables, x, method=model.features)
    assert features.shape == expected
    assert model.apply(variables, x).shape == (1, 3)


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match='Unknown explainer'):
    models.build_explainer('nope', 3)
  with pytest.raises(ValueError, match='Registered: .*simple_cnn'):
    classifiers.build('nope', 3)
  with pytest.raises(ValueError, match='Unknown norm'):
    models.build_explainer('unet', 3, norm='nope').init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_classifier_features_and_head_compose_to_call():
  model = classifiers.build('simple_cnn', 4, width=4, depth=3)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  logits = model.apply(variables, x)
  feats = model.apply(variables, x, method=model.features)
  assert feats.shape == (2, 4, 4, 16)
  np.testing.assert_allclose(model.apply(variables, feats, method=model.logits_from_features),
                             logits, rtol=1e-6)


def make_tiny(num_classes, scale=1.0):
  return classifiers.SimpleCNN(num_classes=num_classes, width=int(2 * scale), depth=1)


def test_register_and_import_path():
  classifiers.register('tiny_for_test')(make_tiny)
  assert 'tiny_for_test' in classifiers.available()
  assert isinstance(classifiers.build('tiny_for_test', 3), classifiers.SimpleCNN)
  model = classifiers.build('tests.test_models:make_tiny', 3, scale=2.0)
  assert model.width == 4


def _guided_filter_reference(guide, source, radius, eps):
  """NumPy guided filter (He et al., colour guide), one image, windows cut at the borders."""
  h, w, k = guide.shape

  def box(a):
    out = np.zeros_like(a)
    for i in range(h):
      for j in range(w):
        out[i, j] = a[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1
                      ].mean(axis=(0, 1))
    return out

  slopes = np.zeros((h, w, k, source.shape[-1]))
  offsets = np.zeros((h, w, source.shape[-1]))
  for i in range(h):
    for j in range(w):
      g = guide[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
      s = source[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
      g, s = g.reshape(-1, k), s.reshape(-1, source.shape[-1])
      gc, sc = g - g.mean(0), s - s.mean(0)
      slopes[i, j] = np.linalg.solve(gc.T @ gc / len(g) + eps * np.eye(k), gc.T @ sc / len(g))
      offsets[i, j] = s.mean(0) - g.mean(0) @ slopes[i, j]
  return np.einsum('hwkc,hwk->hwc', box(slopes), guide) + box(offsets)


@pytest.mark.parametrize('radius', [1, 5])
def test_guided_filter_matches_the_windowed_ridge_fit(radius):
  rng = np.random.default_rng(radius)
  guide = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
  source = rng.normal(size=(2, 7, 9, 4)).astype(np.float32)
  out = np.asarray(layers.guided_filter(jnp.asarray(guide), jnp.asarray(source), radius, 0.1))
  for b in range(2):
    np.testing.assert_allclose(out[b], _guided_filter_reference(guide[b], source[b], radius, 0.1),
                               rtol=1e-4, atol=1e-4)


def test_guided_filter_sharpens_a_blurred_edge_at_the_guide_edge():
  guide = np.zeros((1, 16, 16, 1), np.float32)
  guide[:, :, 9:] = 1.0  # the edge lies between columns 8 and 9
  ramp = np.clip((np.arange(16) - 8.5) / 4, -1, 1).astype(np.float32)  # steps of 0.25
  source = np.broadcast_to(ramp[None, None, :, None], (1, 16, 16, 1))
  out = np.asarray(layers.guided_filter(jnp.asarray(guide), jnp.asarray(source), 2, 1e-4))
  row = out[0, 8, :, 0]
  assert np.all(row[:9] < 0) and np.all(row[9:] > 0)
  assert row[9] - row[8] > 0.6  # a jump at the guide's edge, not the source's ramp
  assert np.all(np.diff(row) > 0)


def test_guided_unet_has_the_variables_of_the_bilinear_one():
  x = jax.random.normal(jax.random.key(2), (2, 30, 30, 3))
  bilinear = models.build_explainer('unet', 4, width=4, depth=2, norm='batch', input_stride=2)
  guided = models.build_explainer('unet', 4, width=4, depth=2, norm='batch', input_stride=2,
                                  upsample='guided', guide_radius=1, guide_eps=0.01)
  variables = bilinear.init(jax.random.key(0), x)
  assert (jax.tree.structure(guided.init(jax.random.key(0), x))
          == jax.tree.structure(variables))
  out = guided.apply(variables, x)
  assert out.shape == (2, 30, 30, 4) and np.all(np.isfinite(out))
  assert not np.allclose(out, bilinear.apply(variables, x), atol=1e-3)
  with pytest.raises(ValueError, match='upsample'):
    models.build_explainer('unet', 4, upsample='nearest').init(jax.random.key(0), x)


def test_guided_upsampling_puts_the_edge_where_the_full_resolution_guide_has_it():
  guide = np.zeros((1, 16, 16, 3), np.float32)
  guide[:, :, 7:] = 1.0  # an edge at an odd column, inside a 2x2 cell of the source's grid
  source = np.where(np.arange(8) >= 4, 5.0, -5.0).astype(np.float32)  # edge between cells 3, 4
  source = np.broadcast_to(source[None, None, :, None], (1, 8, 8, 1))
  out = np.asarray(layers.guided_upsample_2x(jnp.asarray(guide), jnp.asarray(source), 2, 0.01))
  bilinear = np.asarray(jax.image.resize(source, (1, 16, 16, 1), 'bilinear'))
  assert out.shape == (1, 16, 16, 1)
  assert np.all(out[0, :, :7, 0] < 0) and np.all(out[0, :, 7:, 0] > 0)
  assert bilinear[0, 0, 7, 0] < 0  # bilinear upsampling keeps the source grid's edge


# ------------------------------------------------------------------ other classifier families

FAMILY_KWARGS = {'resnet': dict(width=4, depth=3, blocks=1),
                 'mixer': dict(width=8, depth=1, norm='batch')}


def _cheap_key(seed: int) -> jax.Array:
  """A key whose random draws compile fast: XLA takes ~5x as long (seconds) to compile a
  model's initializers on threefry keys as on 'rbg' keys."""
  return jax.random.key(seed, impl='rbg')


def _outputs(model, x):
  """Variables, logits, features, and logits from the features of `model` on `x`, in one jitted
  program (eager Flax compiles every op for each new shape: slower here)."""
  def run(x):
    variables = model.init(_cheap_key(1), x)
    features = model.apply(variables, x, method=model.features)
    return (variables, model.apply(variables, x), features,
            model.apply(variables, features, method=model.logits_from_features))
  return jax.jit(run)(x)


@pytest.mark.parametrize('name', sorted(FAMILY_KWARGS))
@pytest.mark.parametrize('size', [32, 64])
def test_family_gives_finite_float32_logits_and_splits_for_grad_cam(name, size):
  model = classifiers.build(name, 5, **FAMILY_KWARGS[name])
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  _, logits, feats, head_logits = _outputs(model, x)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert not np.allclose(logits[0], logits[1])  # the images are read
  assert feats.shape[:3] == (2, size // 8, size // 8)
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(FAMILY_KWARGS))
def test_family_computes_in_bfloat16_and_returns_float32_logits(name):
  x = jax.random.normal(jax.random.key(0), (2, 36, 36, 3))
  model = classifiers.build(name, 5, dtype=jnp.bfloat16, **FAMILY_KWARGS[name])
  variables, logits, feats, _ = _outputs(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  assert feats.dtype == jnp.bfloat16
  assert feats.shape[:3] == (2, 5, 5)  # 36 px padded to 40
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  full = jax.jit(classifiers.build(name, 5, **FAMILY_KWARGS[name]).apply)(variables, x)
  np.testing.assert_allclose(logits, full, rtol=0.1, atol=0.1)


def test_mixer_has_no_convolutions():
  model = classifiers.build('mixer', 3, width=8, depth=1, overlap=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kernels = [leaf.shape for path, leaf in
             flax.traverse_util.flatten_dict(shapes['params']).items() if path[-1] == 'kernel']
  assert kernels and all(len(shape) == 2 for shape in kernels), kernels
  assert shapes['params']['embed']['kernel'].shape == (9 * 8 * 8 * 3, 8)  # 3x3 patches


def test_mixer_batch_norm_learns_statistics_and_evaluates_each_image_alone():
  model = classifiers.build('mixer', 3, width=8, depth=1, norm='batch')
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(_cheap_key(1), x)
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables['batch_stats'],
                       updates['batch_stats'])
  assert all(jax.tree.leaves(moved)), moved
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(variables, x)[:1], apply(variables, x[:1]), rtol=1e-5,
                             atol=1e-5)
  layer = classifiers.build('mixer', 3, width=8, depth=1, norm='layer')
  assert 'batch_stats' not in jax.eval_shape(layer.init, jax.random.key(0), x)


@pytest.mark.parametrize('overlap', [0, 1])
def test_mixer_token_embeds_its_patch_and_overlap_patches_around_it(overlap):
  """Without blocks, a pixel of patch (1,1) reaches the tokens whose windows hold it only."""
  model = classifiers.build('mixer', 3, width=4, depth=0, patch=4, overlap=overlap)
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  features = jax.jit(functools.partial(model.apply, method=model.features))
  changed = np.any(np.asarray(features(variables, x.at[0, 5, 6, 1].add(1.0)))
                   != np.asarray(features(variables, x)), axis=-1)[0]
  rows, cols = np.nonzero(changed)
  assert set(zip(rows, cols)) == {(1 + dy, 1 + dx) for dy in range(-overlap, overlap + 1)
                                  for dx in range(-overlap, overlap + 1)}


def test_spatial_shift_moves_each_quarter_of_the_channels_one_cell():
  x = jnp.arange(2 * 3 * 4 * 9, dtype=jnp.float32).reshape(2, 3, 4, 9)
  y = np.asarray(classifiers.spatial_shift(x))
  x = np.asarray(x)
  np.testing.assert_array_equal(y[:, 1:, :, 0:2], x[:, :-1, :, 0:2])  # down
  np.testing.assert_array_equal(y[:, :-1, :, 2:4], x[:, 1:, :, 2:4])  # up
  np.testing.assert_array_equal(y[:, :, 1:, 4:6], x[:, :, :-1, 4:6])  # right
  np.testing.assert_array_equal(y[:, :, :-1, 6:8], x[:, :, 1:, 6:8])  # left
  np.testing.assert_array_equal(y[..., 8], x[..., 8])  # the remainder stays
  np.testing.assert_array_equal(y[:, 0, :, 0:2], x[:, 0, :, 0:2])  # the edge cell repeated


def test_shift_mixer_reaches_one_more_patch_a_block_and_serves_any_image_size():
  """Token mixing by shifts: a pixel of patch (2,2) reaches its window (overlap 1) and, per
  block, one patch further up, down, left or right; no weight depends on the number of patches."""
  model = classifiers.build('mixer', 3, width=8, depth=1, patch=4, overlap=1,
                            token_mixing='shift')
  x = jax.random.normal(jax.random.key(0), (1, 24, 24, 3))
  variables = model.init(jax.random.key(1), x)
  features = jax.jit(functools.partial(model.apply, method=model.features))
  changed = np.any(np.asarray(features(variables, x.at[0, 9, 10, 1].add(1.0)))
                   != np.asarray(features(variables, x)), axis=-1)[0]
  window = {(r, c) for r in range(1, 4) for c in range(1, 4)}
  one_step = {(r + dr, c + dc) for r, c in window for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))}
  assert set(zip(*np.nonzero(changed))) == window | one_step
  shapes = lambda size: jax.tree.map(jnp.shape, jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, size, size, 3))))
  assert shapes(16) == shapes(40)
  assert model.apply(variables, jnp.zeros((2, 40, 40, 3))).shape == (2, 3)


@pytest.mark.parametrize('arg', ['smoke,resnet', 'mixer,smoke'])
def test_family_smoke_config_trains_a_classifier_step(arg):
  """The config variant's classifier, its optimizer and the classifier train step, on a fixed
  random batch: the loss falls and every parameter moves."""
  from tests import conftest  # pylint: disable=g-import-not-at-top
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  config = conftest.load_config('synthetic', arg)
  assert config.classifier.name == arg.replace('smoke', '').strip(',')
  size, num_classes = config.data.image_size, config.data.synthetic.num_classes
  model = classifiers.build(config.classifier.name, num_classes, **config.classifier.kwargs)
  tx = train_steps.make_optimizer(config.classifier.train)
  state = jax.jit(lambda rng: train_steps.init_state(model, tx, rng, size))(_cheap_key(0))
  start = state.params
  step = jax.jit(train_steps.make_classifier_train_step(model, tx, multilabel=True))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, size, size, 3)).astype(np.float32),
           'labels': (rng.random((16, num_classes)) < 0.3).astype(np.float32)}
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 4 and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), start, state.params)
  assert all(jax.tree.leaves(moved)), moved
