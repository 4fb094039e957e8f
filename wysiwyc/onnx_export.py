"""The project's SimpleCNN written as an ONNX file (NCHW input, ImageNet-normalized, logits), as
torch.onnx.export would write a PyTorch classifier: the test bench of `classifier.onnx` against
the same classifier in Flax (experiments/export_onnx.py is its command line).

  from wysiwyc import onnx_export
  onnx_export.export('zoo:synthetic_shapes_cnn', 'shapes_cnn.onnx')   # or a workdir

Only `simple_cnn` (any width, depth, stem_stride, pooling; norm 'batch' or 'none') is written.
"""

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc import errors
from wysiwyc.models import classifiers

OPSET = 17
INPUT, OUTPUT = 'input', 'logits'


class _Graph:
  """Nodes and initializers, named after the Flax variables."""

  def __init__(self):
    self.nodes, self.initializers = [], []

  def const(self, name: str, array) -> str:
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
    self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
    return name

  def op(self, op_type: str, inputs: Sequence[str], name: str, output: str = '',
         **attributes) -> str:
    from onnx import helper  # pylint: disable=g-import-not-at-top
    output = output or name
    self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attributes))
    return output


def _conv_block(g: _Graph, x: str, params: dict, stats: dict, prefix: str, norm: str) -> str:
  for j in range(2):
    conv = params[f'Conv_{j}']
    kernel = np.transpose(np.asarray(conv['kernel']), (3, 2, 0, 1))  # HWIO -> OIHW
    inputs = [x, g.const(f'{prefix}.Conv_{j}.kernel', kernel)]
    if 'bias' in conv:
      inputs.append(g.const(f'{prefix}.Conv_{j}.bias', conv['bias']))
    x = g.op('Conv', inputs, f'{prefix}.Conv_{j}', kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    if norm == 'batch':
      bn, st = params[f'BatchNorm_{j}'], stats[f'BatchNorm_{j}']
      names = [g.const(f'{prefix}.BatchNorm_{j}.{k}', v) for k, v in
               (('scale', bn['scale']), ('bias', bn['bias']), ('mean', st['mean']),
                ('var', st['var']))]
      x = g.op('BatchNormalization', [x] + names, f'{prefix}.BatchNorm_{j}', epsilon=1e-5)
    x = g.op('Relu', [x], f'{prefix}.relu_{j}')
  return x


def simple_cnn_model(module: classifiers.SimpleCNN, variables: dict, image_size: int,
                     class_names: Sequence[str] = ()):
  """The `onnx.ModelProto` of a SimpleCNN with `variables` for (batch,3,S,S) images."""
  from onnx import checker, helper, TensorProto  # pylint: disable=g-import-not-at-top
  if not isinstance(module, classifiers.SimpleCNN):
    raise errors.UserError(f'onnx_export writes a SimpleCNN only, not a {type(module).__name__}.')
  if module.norm not in ('batch', 'none'):
    raise errors.UserError(f"onnx_export: norm={module.norm!r} is not written; 'batch' or "
                           "'none' are.")
  multiple = module.stem_stride * 2 ** max(module.depth - 1, 0)
  if image_size % multiple:
    raise errors.UserError(f'onnx_export: image size {image_size} is not a multiple of '
                           f'{multiple} (the stem and the poolings would pad it).')
  variables = jax.device_get(variables)
  params, stats = variables['params'], variables.get('batch_stats', {})
  g = _Graph()
  x = INPUT
  if module.stem_stride == 2:
    x = g.op('SpaceToDepth', [x], 'stem', blocksize=2)
  for i in range(module.depth):
    if i:
      x = g.op('MaxPool', [x], f'pool_{i}', kernel_shape=[2, 2], strides=[2, 2])
    x = _conv_block(g, x, params[f'blocks_{i}'], stats.get(f'blocks_{i}', {}), f'blocks_{i}',
                    module.norm)
  pooled = {p: g.op({'avg': 'GlobalAveragePool', 'max': 'GlobalMaxPool'}[p], [x], f'{p}_pool')
            for p in (('avg', 'max') if module.pooling == 'avgmax' else (module.pooling,))}
  x = (g.op('Concat', [pooled['avg'], pooled['max']], 'avgmax_pool', axis=1)
       if module.pooling == 'avgmax' else pooled[module.pooling])
  x = g.op('Flatten', [x], 'flatten', axis=1)
  head = params['head']
  g.op('Gemm', [x, g.const('head.kernel', head['kernel']), g.const('head.bias', head['bias'])],
       'head', output=OUTPUT)
  graph = helper.make_graph(
      g.nodes, 'simple_cnn',
      [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ['batch', 3, image_size,
                                                                 image_size])],
      [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ['batch', module.num_classes])],
      g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='wysiwyc.onnx_export')
  model.ir_version = 8  # read by onnxruntime releases of the last years
  helper.set_model_props(model, {'class_names': json.dumps(list(class_names)),
                                 'normalization': 'imagenet'})
  checker.check_model(model)
  return model


def load_source(source: str):
  """(module, variables, image size, class names) of 'zoo:NAME' or a trained workdir."""
  from wysiwyc import api  # pylint: disable=g-import-not-at-top
  from wysiwyc import explain  # pylint: disable=g-import-not-at-top
  from wysiwyc.models import shipped  # pylint: disable=g-import-not-at-top
  if shipped.is_zoo_reference(source):
    metadata = shipped.read_metadata(shipped.entry_name(source))
    _, variables, class_names = api.load_classifier(source)
    module = classifiers.build(metadata['classifier']['name'], len(class_names),
                               **metadata['classifier']['kwargs'])
    return module, variables, int(metadata.get('data', {}).get('image_size', 64)), class_names
  if not os.path.isdir(source):
    raise errors.UserError(f"{source!r}: give 'zoo:NAME' or a trained wysiwyc workdir.")
  loaded = explain.load(source)
  return (loaded.classifier, loaded.classifier_variables, loaded.image_size,
          loaded.class_names)


def export(source: str, path: str) -> dict:
  """Writes the SimpleCNN of `source` ('zoo:NAME' or a workdir) to `path`; returns what was
  written (path, image size, classes, the largest logit difference to Flax on 8 images)."""
  from onnx import save  # pylint: disable=g-import-not-at-top
  module, variables, size, class_names = load_source(source)
  model = simple_cnn_model(module, variables, size, class_names)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save(model, path)
  from wysiwyc import onnx_classifier  # pylint: disable=g-import-not-at-top
  images = jax.random.normal(jax.random.key(0), (8, size, size, 3))
  flax_logits = module.apply(variables, images, train=False)
  loaded = onnx_classifier.load(path)
  onnx_logits = loaded.apply_fn(loaded.variables, images)
  return {'path': os.path.abspath(path), 'source': source, 'image_size': size,
          'class_names': list(class_names), 'sha256': loaded.description['sha256'],
          'max_logit_difference': float(jnp.abs(flax_logits - onnx_logits).max())}
