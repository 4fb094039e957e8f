"""ONNX files as the frozen classifier (wysiwyc/onnx_import.py, onnx_classifier.py,
onnx_export.py): graphs of three classifier families built here with onnx.helper (random
weights, 32x32 NCHW inputs as torch.onnx.export makes them) give onnxruntime's logits and
finite-difference input gradients; an unknown operator is one line; a changed file is refused;
the main job trains an Explainer against an ONNX classifier and `explain.load` reads it."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
# pylint: disable=g-import-not-at-top,wrong-import-position
from onnx import helper, numpy_helper, TensorProto

from tests.conftest import REPO, load_config
from tests.test_folder import CLASSES, make_manifest, snapshot
from wysiwyc import errors
from wysiwyc import onnx_classifier
from wysiwyc import onnx_export
from wysiwyc import onnx_import
from wysiwyc.models import classifiers
# pylint: enable=g-import-not-at-top,wrong-import-position

SIZE = 32
NUM_CLASSES = 3


class GraphBuilder:
  """Nodes and random initializers of an NCHW classifier graph, named as torch exports do."""

  def __init__(self, seed: int = 0):
    self.rng = np.random.default_rng(seed)
    self.nodes, self.initializers, self.count = [], [], 0

  def name(self, prefix: str) -> str:
    self.count += 1
    return f'{prefix}_{self.count}'

  def const(self, array, prefix='const') -> str:
    name = self.name(prefix)
    self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
    return name

  def weight(self, *shape, scale=None) -> str:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale or 1.0 / np.sqrt(fan_in)
    return self.const((self.rng.normal(size=shape) * scale).astype(np.float32), 'weight')

  def op(self, op_type: str, *inputs, outputs: int = 1, **attributes):
    names = [self.name(op_type.lower()) for _ in range(outputs)]
    self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type),
                                       **attributes))
    return names[0] if outputs == 1 else names

  def conv(self, x, cin, cout, k=3, **attributes):
    attributes.setdefault('pads', [k // 2] * 4)
    return self.op('Conv', x, self.weight(cout, cin // attributes.get('group', 1), k, k),
                   self.weight(cout, scale=0.1), kernel_shape=[k, k], **attributes)

  def batch_norm(self, x, c):
    stats = [self.const((1 + 0.1 * self.rng.normal(size=c)).astype(np.float32)),
             self.const((0.1 * self.rng.normal(size=c)).astype(np.float32)),
             self.const((0.1 * self.rng.normal(size=c)).astype(np.float32)),
             self.const((1 + 0.2 * self.rng.random(c)).astype(np.float32))]
    return self.op('BatchNormalization', x, *stats, epsilon=1e-5)

  def torch_flatten(self, x):
    """x.view(x.size(0), -1) as torch.onnx.export writes it: Shape, Gather, Unsqueeze, Concat."""
    batch = self.op('Gather', self.op('Shape', x), self.const(np.array(0, np.int64)), axis=0)
    shape = self.op('Concat', self.op('Unsqueeze', batch, self.const(np.array([0], np.int64))),
                    self.const(np.array([-1], np.int64)), axis=0)
    return self.op('Reshape', x, shape)

  def linear(self, x, cin, cout):
    return self.op('Gemm', x, self.weight(cout, cin), self.weight(cout, scale=0.1), transB=1)

  def model(self, output, opset: int = 17):
    graph = helper.make_graph(
        self.nodes, 'classifier',
        [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ['batch', NUM_CLASSES])],
        self.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def erf_gelu(g: GraphBuilder, x):
  """GELU as torch exports it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
  erf = g.op('Erf', g.op('Div', x, g.const(np.array(np.sqrt(2.0), np.float32))))
  one = g.op('Add', erf, g.const(np.array(1.0, np.float32)))
  return g.op('Mul', g.op('Mul', x, one), g.const(np.array(0.5, np.float32)))


def vgg_graph():
  """Conv/BN/ReLU blocks, max pooling (2x2, and 3x3 stride 2 with ceil_mode), average pooling,
  a torch-style flatten and a two-layer head with dropout."""
  g = GraphBuilder(1)
  x = g.op('Relu', g.batch_norm(g.conv('input', 3, 8), 8))
  x = g.op('MaxPool', x, kernel_shape=[2, 2], strides=[2, 2])
  x = g.op('Clip', g.conv(x, 8, 16, dilations=[2, 2], pads=[2, 2, 2, 2]),
           g.const(np.array(0.0, np.float32)), g.const(np.array(6.0, np.float32)))
  x = g.op('MaxPool', x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
  x = g.op('AveragePool', g.op('LeakyRelu', g.conv(x, 16, 16), alpha=0.1), kernel_shape=[3, 3],
           strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
  x = g.linear(g.torch_flatten(x), 16 * 5 * 5, 32)  # 32 -> 16 -> 9 (ceil) -> 5
  x = g.op('Dropout', g.op('HardSwish', x), outputs=1)
  return g.model(g.linear(x, 32, NUM_CLASSES))


def resnet_graph():
  """A stem with SAME_UPPER padding and stride 2, a residual block, a downsampling block with a
  grouped convolution and a 1x1 projection shortcut, global average pooling, Flatten, Gemm."""
  g = GraphBuilder(2)
  x = g.op('Relu', g.batch_norm(g.conv('input', 3, 8, auto_pad='SAME_UPPER', strides=[2, 2],
                                       pads=None), 8))

  def block(x, cin, cout, stride):
    y = g.op('Relu', g.batch_norm(g.conv(x, cin, cout, strides=[stride] * 2), cout))
    y = g.batch_norm(g.conv(y, cout, cout, group=2), cout)
    if stride != 1 or cin != cout:
      x = g.batch_norm(g.conv(x, cin, cout, k=1, strides=[stride] * 2), cout)
    return g.op('Relu', g.op('Add', x, y))

  x = block(block(x, 8, 8, 1), 8, 16, 2)
  x = g.op('Flatten', g.op('GlobalAveragePool', x), axis=1)
  return g.model(g.linear(x, 16, NUM_CLASSES))


def mixer_graph():
  """Patch embedding by an 8x8 stride-8 convolution, tokens by a torch-style reshape and
  transpose, a token-mixing and a channel-mixing MLP with Erf GELU and layer norm, one
  single-head self-attention with Softmax, the mean over the tokens and a linear head."""
  g = GraphBuilder(3)
  width, tokens = 16, (SIZE // 8) ** 2
  x = g.op('Conv', 'input', g.weight(width, 3, 8, 8), g.weight(width, scale=0.1),
           kernel_shape=[8, 8], strides=[8, 8])
  batch = g.op('Gather', g.op('Shape', x), g.const(np.array([0], np.int64)), axis=0)
  shape = g.op('Concat', batch, g.const(np.array([width, -1], np.int64)), axis=0)
  x = g.op('Transpose', g.op('Reshape', x, shape), perm=[0, 2, 1])  # (B, tokens, width)

  def norm(x):
    return g.op('LayerNormalization', x, g.const((1 + 0.1 * g.rng.normal(size=width)).astype(
        np.float32)), g.weight(width, scale=0.1), axis=-1, epsilon=1e-5)

  def mlp(x, cin, hidden):
    y = g.op('Add', g.op('MatMul', x, g.weight(cin, hidden)), g.weight(hidden, scale=0.1))
    return g.op('Add', g.op('MatMul', erf_gelu(g, y), g.weight(hidden, cin)),
                g.weight(cin, scale=0.1))

  y = g.op('Transpose', norm(x), perm=[0, 2, 1])
  x = g.op('Add', x, g.op('Transpose', mlp(y, tokens, 2 * tokens), perm=[0, 2, 1]))
  x = g.op('Add', x, mlp(norm(x), width, 2 * width))
  y = norm(x)
  q, k, v = (g.op('MatMul', y, g.weight(width, width)) for _ in range(3))
  scores = g.op('Mul', g.op('MatMul', q, g.op('Transpose', k, perm=[0, 2, 1])),
                g.const(np.array(width ** -0.5, np.float32)))
  x = g.op('Add', x, g.op('MatMul', g.op('Softmax', scores, axis=-1), v))
  x = g.op('ReduceMean', norm(x), axes=[1], keepdims=0)
  return g.model(g.linear(x, width, NUM_CLASSES))


FAMILIES = {'vgg': vgg_graph, 'resnet': resnet_graph, 'mixer': mixer_graph}


def _images(count=3, seed=0):
  return np.random.default_rng(seed).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


def _reference(model, images):
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  return session.run(None, {'input': images})[0]


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_logits_match_onnxruntime(family):
  model = FAMILIES[family]()
  converted = onnx_import.convert(model)
  apply = jax.jit(lambda params, x: converted.apply(params, x)[0])
  for count in (3, 5):  # the batch size is free: the torch-style reshapes are static per call
    images = _images(count, seed=count)
    expected = _reference(model, images)
    got = np.asarray(apply(converted.params, images))
    assert got.shape == (count, NUM_CLASSES)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_input_gradient_matches_central_differences(family):
  converted = onnx_import.convert(FAMILIES[family]())
  weights = np.random.default_rng(1).normal(size=(2, NUM_CLASSES))
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in converted.params.items()}
    objective = jax.jit(lambda x: jnp.sum(converted.apply(params, x)[0] * weights))
    images = jnp.asarray(_images(2, seed=7), jnp.float64)
    gradient = np.asarray(jax.grad(objective)(images))
    assert np.abs(gradient).max() > 0
    for seed in range(2):
      direction = np.random.default_rng(seed).normal(size=images.shape)
      step = 1e-7  # small: a step across a ReLU's or a max's kink would be a false alarm
      numeric = (objective(images + step * direction) - objective(images - step * direction)) / (
          2 * step)
      np.testing.assert_allclose(float(np.sum(gradient * direction)), float(numeric), rtol=1e-5)


def _i64(*values):
  return np.array(values, np.int64)


# (name, opset, build(g, x) -> output) over an input (B,3,32,32): the operators that the three
# families above do not use, each in the form of the opset named.
SINGLE_OPS = (
    ('gelu_tanh', 20, lambda g, x: g.op('Gelu', x, approximate='tanh')),
    ('gelu', 20, lambda g, x: g.op('Gelu', x)),
    ('elu_softplus_hardsigmoid', 17, lambda g, x: g.op('HardSigmoid', g.op(
        'Softplus', g.op('Elu', x, alpha=0.5)), alpha=0.3, beta=0.4)),
    ('sigmoid_tanh_sqrt_pow_neg', 17, lambda g, x: g.op('Neg', g.op('Pow', g.op('Sqrt', g.op(
        'Sigmoid', g.op('Tanh', x))), g.const(np.array(3.0, np.float32))))),
    ('prelu_sub_exp_log', 17, lambda g, x: g.op('Log', g.op('Exp', g.op('Sub', g.op(
        'PRelu', x, g.const(np.full((3, 1, 1), 0.2, np.float32))), x)))),
    ('global_max_pool', 17, lambda g, x: g.op('GlobalMaxPool', x)),
    ('reduce_max_axes_input', 18, lambda g, x: g.op('ReduceMax', x, g.const(_i64(2, 3)),
                                                    keepdims=0)),
    ('reduce_mean_sum', 17, lambda g, x: g.op('ReduceSum', g.op('ReduceMean', x, axes=[3]),
                                              g.const(_i64(1)), keepdims=1)),
    ('softmax_log_softmax', 17, lambda g, x: g.op('LogSoftmax', g.op('Softmax', x, axis=1),
                                                  axis=2)),
    ('pad_reflect_slice', 17, lambda g, x: g.op('Slice', g.op(
        'Pad', x, g.const(_i64(0, 0, 1, 2, 0, 0, 3, 1)), mode='reflect'),
        g.const(_i64(1, -5)), g.const(_i64(9223372036854775807, 2)), g.const(_i64(2, 3)),
        g.const(_i64(2, -3)))),
    ('pad_constant', 17, lambda g, x: g.op('Pad', x, g.const(_i64(0, 0, 1, 1, 0, 0, 1, 1)),
                                           g.const(np.array(0.5, np.float32)))),
    ('split_squeeze_expand', 17, lambda g, x: g.op('Expand', g.op('Squeeze', g.op(
        'Split', x, g.const(_i64(1, 2)), axis=1, outputs=2)[0], g.const(_i64(1))),
        g.const(_i64(2, 1, 32, 32)))),
    ('where_equal_cast', 17, lambda g, x: g.op('Where', g.op('Greater', x, g.const(np.array(
        0.2, np.float32))), x, g.op('Cast', g.op('Cast', x, to=TensorProto.INT32),
                                    to=TensorProto.FLOAT))),
    ('einsum_max_min', 17, lambda g, x: g.op('Einsum', g.op('Max', x, g.op('Min', x, g.const(
        np.array(0.3, np.float32)))), g.weight(32, 4), equation='bchw,wk->bchk')),
    ('space_depth', 17, lambda g, x: g.op('DepthToSpace', g.op('SpaceToDepth', x, blocksize=2),
                                          blocksize=2, mode='CRD')),
    ('space_to_depth', 17, lambda g, x: g.op('SpaceToDepth', x, blocksize=4)),
    ('conv_same_lower_stride', 17, lambda g, x: g.conv(x, 3, 4, k=4, auto_pad='SAME_LOWER',
                                                       strides=[3, 3], pads=None)),
    ('average_pool_ceil', 17, lambda g, x: g.op('AveragePool', x, kernel_shape=[3, 3],
                                                strides=[2, 2], ceil_mode=1)),
    ('instance_norm', 17, lambda g, x: g.op('InstanceNormalization', x, g.const(np.array(
        [1.5, 0.5, 2.0], np.float32)), g.const(np.array([0.1, -0.2, 0.3], np.float32)),
        epsilon=1e-4)),
    ('group_norm_per_group', 18, lambda g, x: g.op('GroupNormalization', g.conv(x, 3, 4), g.const(
        np.array([1.5, 0.5], np.float32)), g.const(np.array([0.1, -0.2], np.float32)),
        num_groups=2)),
    ('group_norm_per_channel', 21, lambda g, x: g.op('GroupNormalization', g.conv(x, 3, 4),
        g.const(np.array([1.5, 0.5, 2.0, 1.0], np.float32)), g.const(np.array(
            [0.1, -0.2, 0.3, 0.0], np.float32)), num_groups=2)),
    ('shape_range_constant_of_shape', 17, lambda g, x: g.op('Add', x, g.op('ConstantOfShape', g.op(
        'Shape', x), value=numpy_helper.from_array(np.array([0.25], np.float32))))),
)


@pytest.mark.parametrize('case', SINGLE_OPS, ids=lambda case: case[0])
def test_single_operators_match_onnxruntime(case):
  _, opset, build = case
  g = GraphBuilder(4)
  output = build(g, 'input')
  graph = helper.make_graph(
      g.nodes, 'ops',
      [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3, SIZE, SIZE])],
      [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
  model.ir_version = 9
  images = _images(2)
  expected = _reference(model, images)
  converted = onnx_import.convert(model)
  got = np.asarray(jax.jit(lambda p, x: converted.apply(p, x)[0])(converted.params, images))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ errors, the project's CNN


def _with_unknown_operators():
  g = GraphBuilder(5)
  x = g.op('Relu', g.conv('input', 3, 4))
  x = g.op('FancyNorm', x)
  g.nodes.append(helper.make_node('FusedGelu', [x], ['fused'], name='fused_gelu',
                                  domain='com.microsoft'))
  x = g.op('FancyNorm', 'fused')
  x = g.op('Flatten', g.op('GlobalAveragePool', x))
  graph = helper.make_graph(
      g.nodes, 'unknown',
      [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3, SIZE, SIZE])],
      [helper.make_tensor_value_info(g.linear(x, 4, NUM_CLASSES), TensorProto.FLOAT, None)],
      g.initializers)
  return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17),
                                                 helper.make_opsetid('com.microsoft', 1)])


def test_unknown_operators_are_one_line_naming_them_and_their_nodes(tmp_path):
  path = str(tmp_path / 'unknown.onnx')
  onnx.save(_with_unknown_operators(), path)
  with pytest.raises(errors.UserError) as raised:
    onnx_classifier.load(path)
  message = str(raised.value)
  assert '\n' not in message
  assert "FancyNorm (nodes 'FancyNorm_" in message and 'com.microsoft.FusedGelu' in message
  assert "'fused_gelu'" in message and path in message


def test_project_simple_cnn_exported_gives_its_logits(tmp_path):
  """onnx_export writes the SimpleCNN (space-to-depth stem, batch norm, max pooling, both global
  poolings); onnxruntime and the import give the Flax module's logits."""
  module = classifiers.build('simple_cnn', NUM_CLASSES, width=4, depth=3, norm='batch',
                             stem_stride=2, pooling='avgmax')
  images = np.random.default_rng(0).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
  variables = module.init(jax.random.key(0), images, train=False)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda a: a + 0.1 * np.abs(rng.normal(size=a.shape)).astype(a.dtype),
                           variables)  # batch statistics away from (0, 1)
  expected = np.asarray(module.apply(variables, images, train=False))
  path = str(tmp_path / 'cnn.onnx')
  onnx.save(onnx_export.simple_cnn_model(module, variables, SIZE, CLASSES), path)
  session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  by_ort = session.run(None, {'input': images.transpose(0, 3, 1, 2)})[0]
  loaded = onnx_classifier.load(path)
  by_jax = np.asarray(jax.jit(loaded.apply_fn)(loaded.variables, images))
  scale = np.abs(expected).max()
  np.testing.assert_allclose(by_ort, expected, rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(by_jax, expected, rtol=1e-4, atol=1e-4 * scale)
  assert loaded.description['layout'] == 'NCHW'
  assert loaded.description['num_parameters'] == sum(
      a.size for a in jax.tree.leaves(variables))
  assert onnx_classifier.class_names(path) == CLASSES
  from wysiwyc import api  # pylint: disable=g-import-not-at-top
  apply_fn, api_variables, class_names = api.load_classifier(f'onnx:{path}')
  assert class_names == CLASSES
  np.testing.assert_allclose(apply_fn(api_variables, images), by_jax, rtol=1e-6, atol=1e-6)


def test_workdirs_trained_before_the_onnx_fields_resume():
  from wysiwyc import run_setup  # pylint: disable=g-import-not-at-top
  config = load_config('folder', 'smoke')
  current = json.loads(config.to_json_best_effort())
  previous = json.loads(config.to_json_best_effort())
  for field in onnx_classifier.config_fields():
    del previous['classifier'][field]
  assert run_setup.changed_settings(previous, current, 'classifier') == []
  current['classifier']['onnx'] = 'model.onnx'
  assert run_setup.changed_settings(previous, current, 'classifier') == [
      ('classifier.onnx', run_setup.ABSENT, 'model.onnx')]


def test_input_conventions_map_the_pipeline_images(tmp_path):
  """NHWC graphs, 'unit' and 'pixels' normalization, probability outputs turned into logits."""
  g = GraphBuilder(6)
  mean = g.op('ReduceMean', 'input', axes=[1, 2], keepdims=0)  # (B,3): NHWC channel means
  probs = g.op('Softmax', g.op('Mul', mean, g.const(np.array(0.1, np.float32))), axis=-1)
  graph = helper.make_graph(
      g.nodes, 'nhwc',
      [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', SIZE, SIZE, 3])],
      [helper.make_tensor_value_info(probs, TensorProto.FLOAT, ['batch', 3])], g.initializers)
  path = str(tmp_path / 'nhwc.onnx')
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), path)
  pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
  from wysiwyc import explain  # pylint: disable=g-import-not-at-top
  images = explain.normalize(pixels)
  expected_means = {'imagenet': images.mean((1, 2)), 'unit': pixels.mean((1, 2)) / 255.0,
                    'pixels': pixels.mean((1, 2)).astype(np.float64)}
  for normalization, means in expected_means.items():
    loaded = onnx_classifier.load(path, normalization=normalization, outputs='probabilities',
                                  multilabel=False)
    assert loaded.description['layout'] == 'NHWC'
    logits = np.asarray(loaded.apply_fn(loaded.variables, images))
    expected = jax.nn.softmax(0.1 * means)
    np.testing.assert_allclose(jax.nn.softmax(logits), expected, rtol=1e-3, atol=1e-5)
  with pytest.raises(errors.UserError, match=r"classifier.onnx_layout='CHW'; choose one of"):
    onnx_classifier.load(path, layout='CHW')


# ------------------------------------------------------------------------------ the main job


def _folder_config(tmp_path, onnx_path):
  config = load_config('folder', 'smoke')
  config.data.folder.root = make_manifest(tmp_path / 'mine')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.classifier.onnx = onnx_path
  return config


def test_main_job_trains_an_explainer_against_an_onnx_classifier(tmp_path, capsys):
  from wysiwyc import explain  # pylint: disable=g-import-not-at-top
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'resnet.onnx')
  onnx.save(resnet_graph(), path)
  config = _folder_config(tmp_path, path)
  # From random weights: the black-box start (the default for an ONNX file) calls the classifier
  # as the Explainer's steps do, and would only add its compilations here.
  config.explainer.init_from = ''
  workdir = str(tmp_path / 'work')
  results = train.train_and_evaluate(config, workdir)
  assert 0 <= results['explainer']['iou@0.5'] <= 1
  console = capsys.readouterr().err
  assert f'classifier: ONNX {path} (opset 17, input (batch,3,32,32) NCHW' in console
  record = json.load(open(os.path.join(workdir, 'classifier', onnx_classifier.RECORD)))
  assert record['sha256'] == onnx_classifier.sha256(path) and record['path'] == path
  assert not os.path.exists(os.path.join(workdir, 'classifier', 'best'))  # the file is the source

  loaded = explain.load(workdir)
  image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
  assert loaded.masks(image).shape == (SIZE, SIZE, len(CLASSES))
  logits = _reference(resnet_graph(), explain.normalize(image)[None].transpose(0, 3, 1, 2))
  np.testing.assert_allclose(loaded.predict(image), jax.nn.sigmoid(logits[0]), atol=1e-5)

  # The explain CLI reads the workdir (and only reads it).
  image_path = os.path.join(config.data.folder.root, 'images', 'test_1.png')
  before = snapshot(workdir)
  done = subprocess.run([sys.executable, '-m', 'wysiwyc.explain', f'--workdir={workdir}',
                         f'--out={tmp_path / "out"}', image_path], capture_output=True,
                        text=True, cwd=REPO, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert os.path.exists(tmp_path / 'out' / 'test_1.json')
  assert snapshot(workdir) == before

  # The file changes: the workdir refuses it, in explain and in the main job, writing nothing.
  onnx.save(vgg_graph(), path)
  with pytest.raises(errors.UserError, match='has changed'):
    explain.load(workdir)
  with pytest.raises(errors.UserError, match=r'\(the file changed\)\. Nothing was written\. Use '
                     r'a new --workdir, or --retrain=classifier'):
    train.train_and_evaluate(config, workdir)
  assert snapshot(workdir) == before


def test_a_file_is_read_once_per_version(tmp_path, monkeypatch):
  path = str(tmp_path / 'model.onnx')
  onnx.save(vgg_graph(), path)
  reads = []
  read_model = onnx_classifier.read_model
  monkeypatch.setattr(onnx_classifier, 'read_model',
                      lambda *args: reads.append(args) or read_model(*args))
  first = onnx_classifier.load(path)
  second = onnx_classifier.load(path, multilabel=False)  # the checks, then the stage
  assert len(reads) == 1 and first.description == second.description
  onnx.save(resnet_graph(), path)  # rewritten: read again, its own sha256
  third = onnx_classifier.load(path)
  assert len(reads) == 2
  assert third.description['sha256'] == onnx_classifier.sha256(path) != first.description['sha256']


def test_main_command_with_an_unknown_operator_exits_2_in_one_line(tmp_path):
  path = str(tmp_path / 'unknown.onnx')
  onnx.save(_with_unknown_operators(), path)
  workdir = tmp_path / 'work'
  done = subprocess.run(
      [sys.executable, '-m', 'wysiwyc.main', '--config=configs/folder.py:smoke',
       f'--config.data.folder.root={make_manifest(tmp_path / "mine")}',
       f'--config.classifier.onnx={path}',
       f'--workdir={workdir}'], capture_output=True, text=True, cwd=REPO, timeout=300,
      check=False)
  assert done.returncode == 2, done.stderr
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and 'FancyNorm' in lines[0], done.stderr
  assert not os.path.exists(workdir)


def test_docs_list_every_supported_operator():
  with open(os.path.join(REPO, 'docs', 'pytorch.md')) as f:
    page = f.read()
  section = page[page.index('## What is supported'):page.index('Not supported')]
  missing = [op for op in onnx_import.OPS if not re.search(rf'\b{op}\b', section)]
  assert not missing, missing
