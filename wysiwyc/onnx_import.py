"""An ONNX graph as a pure, jit-able and differentiable JAX function: `convert(model)`.

Longer than 400 lines because it is one table of operators (one small function each) and the
evaluator that walks a graph through it; nothing in it is used apart.

The float initializers become the function's parameters (a flat dict, frozen by the caller); the
others (shapes, indices, axes) stay numpy constants. A value that depends only on constants and on
shapes (torch.onnx.export's Shape -> Gather -> Concat -> Reshape) is computed with numpy while the
function is traced, so `jax.jit` sees static shapes and the batch size may change between calls.
An operator outside `OPS`, or a shape computed from the pixels, is a one-line `UserError`.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from wysiwyc import errors

DEFAULT_DOMAINS = ('', 'ai.onnx')


class NodeError(errors.UserError):
  """A node that cannot be converted; the caller names the file."""


def _static(value) -> bool:
  return isinstance(value, (np.ndarray, np.generic))


def _xp(*values):
  """numpy when every value is a constant (shape arithmetic stays static), else jax.numpy."""
  return np if all(_static(v) for v in values if v is not None) else jnp


def _need_static(node, value, what: str) -> np.ndarray:
  if value is None:
    return None
  if not _static(value):
    raise NodeError(f"node {node.name!r} ({node.op_type}): its {what} is computed from the "
                    'image at run time; only values known without the image are supported')
  return np.asarray(value)


def _ints(value) -> List[int]:
  return [int(v) for v in np.asarray(value).reshape(-1)]


def _jax_dtype(dtype):
  """`dtype` as JAX will hold it (int64 -> int32 unless x64 is on)."""
  return jax.dtypes.canonicalize_dtype(dtype)


def _same_float(*values):
  """The values as jax arrays of one float dtype (an operand held as float32 numpy constant
  meets a float64 image in gradient checks)."""
  dtype = jnp.result_type(*values)
  return [jnp.asarray(v, dtype) for v in values]


# ----------------------------------------------------------------------------------------------
# Element-wise operators and activations.


def _binary(np_fn, jnp_fn):
  def op(node, a, b):
    return (np_fn if _xp(a, b) is np else jnp_fn)(a, b)
  return op


def _unary(np_fn, jnp_fn):
  def op(node, x):
    return (np_fn if _static(x) else jnp_fn)(x)
  return op


def _div(node, a, b):
  if _xp(a, b) is np:
    if np.issubdtype(np.asarray(a).dtype, np.integer):  # ONNX truncates integer division
      return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.asarray(a).dtype)
    return np.divide(a, b).astype(np.result_type(a, b))
  return jnp.divide(a, b)


def _pow(node, a, b):
  if _xp(a, b) is np:
    return np.power(a, b).astype(np.asarray(a).dtype)
  return jnp.power(a, jnp.asarray(b, jnp.result_type(a)))


def _variadic(np_fn, jnp_fn):
  def op(node, *values):
    fn = np_fn if _xp(*values) is np else jnp_fn
    out = values[0]
    for value in values[1:]:
      out = fn(out, value)
    return out
  return op


def _mean(node, *values):
  return _variadic(np.add, jnp.add)(node, *values) / len(values)


def _erf(node, x):
  return jax.scipy.special.erf(x)


def _gelu(node, x, approximate='none'):
  return jax.nn.gelu(x, approximate=_str(approximate) == 'tanh')


def _leaky_relu(node, x, alpha=0.01):
  return jnp.where(x >= 0, x, alpha * x)


def _elu(node, x, alpha=1.0):
  return jnp.where(x > 0, x, alpha * (jnp.exp(jnp.minimum(x, 0)) - 1))


def _prelu(node, x, slope):
  return jnp.where(x >= 0, x, slope * x)


def _hard_sigmoid(node, x, alpha=0.2, beta=0.5):
  return jnp.clip(alpha * x + beta, 0, 1)


def _hard_swish(node, x):
  return x * jnp.clip(x / 6 + 0.5, 0, 1)


def _clip(node, x, low=None, high=None, min=None, max=None):  # pylint: disable=redefined-builtin
  low = min if low is None else low  # opset < 11: attributes; since: inputs
  high = max if high is None else high
  xp = _xp(x, low, high)
  if low is not None:
    x = xp.maximum(x, low)
  if high is not None:
    x = xp.minimum(x, high)
  return x


def _softmax(node, x, axis=None, opset=13, log=False):
  fn = jax.nn.log_softmax if log else jax.nn.softmax
  if opset >= 13:
    return fn(x, axis=-1 if axis is None else axis)
  axis = 1 if axis is None else axis % x.ndim  # older opsets: over the flattened trailing axes
  flat = fn(x.reshape(int(np.prod(x.shape[:axis])), -1), axis=-1)
  return flat.reshape(x.shape)


def _where(node, condition, a, b):
  return _xp(condition, a, b).where(condition, a, b)


def _cast(node, x, to):
  from onnx import helper  # pylint: disable=g-import-not-at-top
  dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
  return x.astype(dtype) if _static(x) else x.astype(_jax_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# Convolution, normalization, pooling, matrix products.


def _spatial_pads(node, in_sizes, kernel, strides, dilations, auto_pad, pads):
  """[(begin, end)] per spatial axis from `pads` or `auto_pad`."""
  auto_pad = _str(auto_pad) or 'NOTSET'
  n = len(in_sizes)
  if auto_pad == 'NOTSET':
    pads = list(pads) if pads is not None else [0] * (2 * n)
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]
  if auto_pad == 'VALID':
    return [(0, 0)] * n
  if auto_pad not in ('SAME_UPPER', 'SAME_LOWER'):
    raise NodeError(f'node {node.name!r} ({node.op_type}): auto_pad={auto_pad!r} is not supported')
  result = []
  for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    small = total // 2
    result.append((small, total - small) if auto_pad == 'SAME_UPPER' else (total - small, small))
  return result


def _conv(node, x, w, b=None, auto_pad='NOTSET', dilations=None, group=1, kernel_shape=None,
          pads=None, strides=None):
  n = x.ndim - 2
  strides = list(strides or [1] * n)
  dilations = list(dilations or [1] * n)
  kernel = list(kernel_shape or w.shape[2:])
  padding = _spatial_pads(node, x.shape[2:], kernel, strides, dilations, auto_pad, pads)
  x, w = _same_float(x, w)
  spatial = 'DHW'[3 - n:]
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, (f'NC{spatial}', f'OI{spatial}',
                                                          f'NC{spatial}'))
  y = lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilations,
                               dimension_numbers=numbers, feature_group_count=int(group))
  if b is not None:
    y = y + jnp.asarray(b, y.dtype).reshape((1, -1) + (1,) * n)
  return y


def _batch_norm(node, x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0,
                spatial=1):
  if training_mode:
    raise NodeError(f'node {node.name!r} (BatchNormalization): training_mode=1 is not supported; '
                    'export the model in eval mode')
  shape = (1, -1) + (1,) * (x.ndim - 2)
  factor = jnp.asarray(scale).reshape(shape) * lax.rsqrt(jnp.asarray(var).reshape(shape) + epsilon)
  return (x - jnp.asarray(mean).reshape(shape)) * factor + jnp.asarray(bias).reshape(shape)


def _pool_window(node, x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
  """(window, strides, dilations, padding of the spatial axes incl. ceil_mode's extra, and the
  explicit part of that padding)."""
  n = x.ndim - 2
  kernel = list(kernel_shape)
  strides = list(strides or [1] * n)
  dilations = list(dilations or [1] * n)
  explicit = _spatial_pads(node, x.shape[2:], kernel, strides, dilations, auto_pad, pads)
  padding = []
  for size, k, s, d, (begin, end) in zip(x.shape[2:], kernel, strides, dilations, explicit):
    extent = size + begin + end - ((k - 1) * d + 1)
    out = (-(-extent // s) if ceil_mode else extent // s) + 1
    if ceil_mode and (out - 1) * s >= size + begin:  # a window must start inside the image
      out -= 1
    padding.append((begin, max((out - 1) * s + (k - 1) * d + 1 - size - begin, end)))
  return kernel, strides, dilations, padding, explicit


def _max_pool(node, x, kernel_shape, strides=None, pads=None, dilations=None, auto_pad='NOTSET',
              ceil_mode=0, storage_order=0):
  if len(node.output) > 1 and node.output[1]:
    raise NodeError(f'node {node.name!r} (MaxPool): the Indices output is not supported')
  kernel, strides, dilations, padding, _ = _pool_window(
      node, x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
  if (kernel == strides and set(dilations) == {1} and x.ndim == 4
      and all(p == (0, 0) for p in padding) and all(s % k == 0 for s, k in
                                                    zip(x.shape[2:], kernel))):
    # A reshape and a max: XLA's gradient of a window reduction is slow on CPU (DESIGN.md s. 3).
    b, c, h, w = x.shape
    return x.reshape(b, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1]).max(axis=(3, 5))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, *kernel), (1, 1, *strides),
                           ((0, 0), (0, 0), *padding), window_dilation=(1, 1, *dilations))


def _average_pool(node, x, kernel_shape, strides=None, pads=None, dilations=None,
                  auto_pad='NOTSET', ceil_mode=0, count_include_pad=0):
  kernel, strides, dilations, padding, explicit = _pool_window(
      node, x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
  window = dict(window_dimensions=(1, 1, *kernel), window_strides=(1, 1, *strides),
                padding=((0, 0), (0, 0), *padding), window_dilation=(1, 1, *dilations))
  total = lax.reduce_window(x, 0.0, lax.add, **window)
  ones = jnp.ones((1, 1) + x.shape[2:], x.dtype)
  if count_include_pad:  # the explicit pads count, ceil_mode's extra does not
    ones = jnp.pad(ones, ((0, 0), (0, 0), *explicit), constant_values=1)
    window['padding'] = ((0, 0), (0, 0), *[(0, end - e) for (_, end), (_, e)
                                          in zip(padding, explicit)])
  count = lax.reduce_window(ones, 0.0, lax.add, **window)
  return total / count


def _global_pool(reduce):
  def op(node, x):
    return reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True)
  return op


# pylint: disable-next=invalid-name
def _gemm(node, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
  a, b = _same_float(a, b)
  y = alpha * jnp.matmul(a.T if transA else a, b.T if transB else b)
  return y if c is None else y + beta * jnp.asarray(c, y.dtype)


def _matmul(node, a, b):
  return jnp.matmul(*_same_float(a, b))


def _einsum(node, *values, equation):
  return jnp.einsum(_str(equation), *_same_float(*values))


def _layer_norm(node, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
  axes = tuple(range(axis % x.ndim, x.ndim))
  mean = x.mean(axis=axes, keepdims=True)
  var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
  y = (x - mean) * lax.rsqrt(var + epsilon) * scale
  return y if bias is None else y + bias


def _instance_norm(node, x, scale, bias, epsilon=1e-5):
  """Each image's channels normalized over their pixels, then scaled and shifted per channel."""
  return _group_norm(node, x, scale, bias, epsilon=epsilon, num_groups=x.shape[1])


def _group_norm(node, x, scale, bias, epsilon=1e-5, num_groups=1, stash_type=1):
  """Each image's channels normalized in `num_groups` groups over the group's channels and
  pixels; `scale`/`bias` per channel (opset 21) or per group (opset 18's form)."""
  b, c = x.shape[:2]
  if c % num_groups:
    raise NodeError(f'node {node.name!r} (GroupNormalization): {c} channels do not split into '
                    f'{num_groups} groups')
  grouped = x.reshape((b, num_groups, -1))
  mean = grouped.mean(axis=-1, keepdims=True)
  var = jnp.square(grouped - mean).mean(axis=-1, keepdims=True)
  y = ((grouped - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
  per_channel = lambda v: (jnp.repeat(jnp.asarray(v), c // num_groups) if np.size(v) != c
                           else jnp.asarray(v)).reshape((1, c) + (1,) * (x.ndim - 2))
  return y * per_channel(scale) + per_channel(bias)


# ----------------------------------------------------------------------------------------------
# Shapes and indexing (numpy when the input is a constant or a shape).


def _shape(node, x, start=0, end=None):
  return np.array(x.shape[start:end], np.int64)


def _reshape(node, x, shape, allowzero=0):
  shape = _ints(_need_static(node, shape, 'shape'))
  if not allowzero:
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
  return _xp(x).reshape(x, shape)


def _flatten(node, x, axis=1):
  axis = axis % x.ndim if x.ndim else 0
  return _xp(x).reshape(x, (int(np.prod(x.shape[:axis])), -1))


def _transpose(node, x, perm=None):
  return _xp(x).transpose(x, perm)


def _concat(node, *values, axis):
  return _xp(*values).concatenate(values, axis=axis)


def _axes(node, inline, given, what='axes') -> Optional[List[int]]:
  """Axes from an input (newer opsets) or an attribute (older ones); None when neither."""
  if inline is not None:
    return _ints(_need_static(node, inline, what))
  return None if given is None else list(given)


def _squeeze(node, x, axes_input=None, axes=None):
  axes = _axes(node, axes_input, axes)
  axes = tuple(i for i, s in enumerate(x.shape) if s == 1) if axes is None else tuple(axes)
  return _xp(x).squeeze(x, axis=axes)


def _unsqueeze(node, x, axes_input=None, axes=None):
  axes = _axes(node, axes_input, axes)
  rank = x.ndim + len(axes)
  out = x
  for axis in sorted(a % rank for a in axes):
    out = _xp(x).expand_dims(out, axis)
  return out


def _gather(node, x, indices, axis=0):
  xp = _xp(x, indices)
  if xp is jnp and _static(indices):
    indices = np.asarray(indices).astype(np.int32)
  indices = xp.where(indices < 0, indices + x.shape[axis], indices)
  return xp.take(x, indices, axis=axis)


def _slice(node, x, starts, ends, axes=None, steps=None):
  starts = _ints(_need_static(node, starts, 'starts'))
  ends = _ints(_need_static(node, ends, 'ends'))
  axes = _ints(_need_static(node, axes, 'axes')) if axes is not None else range(len(starts))
  steps = _ints(_need_static(node, steps, 'steps')) if steps is not None else [1] * len(starts)
  index = [slice(None)] * x.ndim
  big = 2 ** 62
  for start, end, axis, step in zip(starts, ends, axes, steps):
    index[axis] = slice(start if abs(start) < big else None, end if abs(end) < big else None, step)
  return x[tuple(index)]


def _slice_v1(node, x, starts, ends, axes=None):
  return _slice(node, x, np.array(starts), np.array(ends),
                None if axes is None else np.array(axes))


def _split(node, x, split_input=None, axis=0, split=None, num_outputs=None):
  sizes = _axes(node, split_input, split, 'split')
  count = len(node.output)
  if sizes is None:
    size = -(-x.shape[axis] // count)
    sizes = [min(size, x.shape[axis] - i * size) for i in range(count)]
  bounds = np.cumsum(sizes)[:-1]
  return tuple(_xp(x).split(x, bounds, axis=axis))


def _expand(node, x, shape):
  shape = _ints(_need_static(node, shape, 'shape'))
  return _xp(x).broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape)))


def _constant_of_shape(node, shape, value=None):
  fill = np.zeros(1, np.float32) if value is None else _tensor(value)
  return np.full(_ints(_need_static(node, shape, 'shape')), fill.reshape(-1)[0], fill.dtype)


def _range(node, start, limit, delta):
  values = [_need_static(node, v, 'range') for v in (start, limit, delta)]
  return np.arange(*values).astype(np.asarray(values[0]).dtype)


def _space_to_depth(node, x, blocksize):
  b, c, h, w = x.shape
  s = blocksize
  x = x.reshape(b, c, h // s, s, w // s, s).transpose(0, 3, 5, 1, 2, 4)
  return x.reshape(b, c * s * s, h // s, w // s)


def _depth_to_space(node, x, blocksize, mode='DCR'):
  b, c, h, w = x.shape
  s = blocksize
  if _str(mode) == 'DCR':
    x = x.reshape(b, s, s, c // (s * s), h, w).transpose(0, 3, 4, 1, 5, 2)
  else:
    x = x.reshape(b, c // (s * s), s, s, h, w).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, c // (s * s), h * s, w * s)


def _pad(node, x, pads_input=None, constant=None, axes_input=None, mode='constant', pads=None,
         value=0.0):
  pads = _ints(_need_static(node, pads_input, 'pads')) if pads_input is not None else list(pads)
  axes = (_ints(_need_static(node, axes_input, 'axes')) if axes_input is not None
          else list(range(x.ndim)))
  widths = [(0, 0)] * x.ndim
  for i, axis in enumerate(axes):
    widths[axis % x.ndim] = (pads[i], pads[i + len(axes)])
  mode = _str(mode)
  if mode == 'constant':
    fill = value if constant is None else constant.reshape(())
    return _xp(x, fill).pad(x, widths, constant_values=fill)
  if mode not in ('reflect', 'edge'):
    raise NodeError(f'node {node.name!r} (Pad): mode={mode!r} is not supported')
  return _xp(x).pad(x, widths, mode=mode)


def _reduce(np_fn, jnp_fn, axes_from_input_at: int):
  """ReduceMean/Max/Sum/..: the axes are an attribute before opset `axes_from_input_at`, an
  optional input since."""
  def op(node, x, axes_input=None, axes=None, keepdims=1, noop_with_empty_axes=0):
    axes = _axes(node, axes_input, axes)
    if not axes:
      if noop_with_empty_axes:
        return x
      axes = list(range(x.ndim))
    fn = np_fn if _static(x) else jnp_fn
    return fn(x, axis=tuple(a % x.ndim for a in axes), keepdims=bool(keepdims))
  op.axes_from_input_at = axes_from_input_at
  return op


def _identity(node, x, *rest, **attributes):
  return x


def _dropout(node, x, *rest, **attributes):
  return (x, None) if len(node.output) > 1 else x


def _constant(node, value=None, value_float=None, value_floats=None, value_int=None,
              value_ints=None, **unsupported):
  if value is not None:
    return _tensor(value)
  for given, dtype in ((value_float, np.float32), (value_floats, np.float32),
                       (value_int, np.int64), (value_ints, np.int64)):
    if given is not None:
      return np.array(given, dtype)
  raise NodeError(f'node {node.name!r} (Constant): only value, value_float(s) and value_int(s) '
                  'are supported')


OPS: Dict[str, Callable] = {
    'Add': _binary(np.add, jnp.add), 'Sub': _binary(np.subtract, jnp.subtract),
    'Mul': _binary(np.multiply, jnp.multiply), 'Div': _div, 'Pow': _pow,
    'Max': _variadic(np.maximum, jnp.maximum), 'Min': _variadic(np.minimum, jnp.minimum),
    'Sum': _variadic(np.add, jnp.add), 'Mean': _mean,
    'Equal': _binary(np.equal, jnp.equal), 'Less': _binary(np.less, jnp.less),
    'Greater': _binary(np.greater, jnp.greater), 'Where': _where,
    'Sqrt': _unary(np.sqrt, jnp.sqrt), 'Neg': _unary(np.negative, jnp.negative),
    'Abs': _unary(np.abs, jnp.abs), 'Exp': _unary(np.exp, jnp.exp), 'Log': _unary(np.log, jnp.log),
    'Reciprocal': _unary(np.reciprocal, jnp.reciprocal), 'Floor': _unary(np.floor, jnp.floor),
    'Ceil': _unary(np.ceil, jnp.ceil), 'Erf': _erf,
    'Relu': lambda node, x: jax.nn.relu(x), 'Sigmoid': lambda node, x: jax.nn.sigmoid(x),
    'Tanh': lambda node, x: jnp.tanh(x), 'Softplus': lambda node, x: jax.nn.softplus(x),
    'Gelu': _gelu, 'LeakyRelu': _leaky_relu, 'Elu': _elu, 'PRelu': _prelu, 'Clip': _clip,
    'HardSigmoid': _hard_sigmoid, 'HardSwish': _hard_swish,
    'Softmax': _softmax, 'LogSoftmax': lambda node, x, **kw: _softmax(node, x, log=True, **kw),
    'Conv': _conv, 'BatchNormalization': _batch_norm, 'MaxPool': _max_pool,
    'AveragePool': _average_pool, 'GlobalAveragePool': _global_pool(jnp.mean),
    'GlobalMaxPool': _global_pool(jnp.max), 'Gemm': _gemm, 'MatMul': _matmul, 'Einsum': _einsum,
    'LayerNormalization': _layer_norm, 'InstanceNormalization': _instance_norm,
    'GroupNormalization': _group_norm,
    'ReduceMean': _reduce(np.mean, jnp.mean, 18), 'ReduceMax': _reduce(np.max, jnp.max, 18),
    'ReduceMin': _reduce(np.min, jnp.min, 18), 'ReduceSum': _reduce(np.sum, jnp.sum, 13),
    'ReduceProd': _reduce(np.prod, jnp.prod, 18),
    'Shape': _shape, 'Reshape': _reshape, 'Flatten': _flatten, 'Transpose': _transpose,
    'Concat': _concat, 'Squeeze': _squeeze, 'Unsqueeze': _unsqueeze, 'Gather': _gather,
    'Slice': _slice, 'Split': _split, 'Expand': _expand, 'ConstantOfShape': _constant_of_shape,
    'Range': _range, 'Pad': _pad, 'SpaceToDepth': _space_to_depth,
    'DepthToSpace': _depth_to_space, 'Constant': _constant, 'Identity': _identity,
    'Dropout': _dropout, 'Cast': _cast,
}


# ----------------------------------------------------------------------------------------------
# Graphs.


def _str(value) -> str:
  return value.decode() if isinstance(value, bytes) else (value or '')


def _tensor(proto) -> np.ndarray:
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  return numpy_helper.to_array(proto)


def _attributes(node) -> dict:
  from onnx import helper  # pylint: disable=g-import-not-at-top
  return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unsupported_operators(model) -> Dict[str, List[str]]:
  """{operator: [node names]} of the nodes `convert` cannot run (domains included)."""
  found = {}
  for index, node in enumerate(model.graph.node):
    op = node.op_type if node.domain in DEFAULT_DOMAINS else f'{node.domain}.{node.op_type}'
    if op not in OPS:
      found.setdefault(op, []).append(node.name or f'#{index}')
  return found


def describe_unsupported(found: Dict[str, List[str]]) -> str:
  """'Foo (node a), Bar (nodes b, c and 3 more)'."""
  parts = []
  for op, names in found.items():
    shown = ', '.join(repr(n) for n in names[:2]) + (f' and {len(names) - 2} more'
                                                      if len(names) > 2 else '')
    parts.append(f'{op} (node{"s" if len(names) > 1 else ""} {shown})')
  return ', '.join(parts)


def opset_version(model) -> int:
  return max([o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS] or [1])


def _dims(value_info) -> Tuple:
  """A graph input's or output's shape: ints, or names/None for dynamic axes."""
  dims = value_info.type.tensor_type.shape.dim
  return tuple(d.dim_value if d.HasField('dim_value') else (d.dim_param or None) for d in dims)


def output_shapes(model) -> Tuple[Tuple, ...]:
  """The graph outputs' shapes (`_dims`)."""
  return tuple(_dims(v) for v in model.graph.output)


@dataclasses.dataclass(frozen=True)
class Converted:
  """An ONNX model as `apply(params, *inputs) -> outputs` (a tuple, in the graph's order)."""
  apply: Callable
  params: Dict[str, np.ndarray]
  input_names: Tuple[str, ...]
  input_shapes: Tuple[Tuple, ...]
  output_names: Tuple[str, ...]
  opset: int


def _call(node, fn, values: list, attributes: dict, opset: int):
  """`fn(node, *inputs, **attributes)`, with the conventions of older opsets mapped."""
  if node.op_type in ('Softmax', 'LogSoftmax'):
    attributes = dict(attributes, opset=opset)
  if node.op_type == 'Slice' and opset < 10:
    return _slice_v1(node, *values, **attributes)
  if node.op_type == 'Clip' and opset < 11:
    return _clip(node, values[0], **attributes)
  if getattr(fn, 'axes_from_input_at', None) and opset < fn.axes_from_input_at:
    values = values[:1]
  while values and values[-1] is None:
    values = values[:-1]
  return fn(node, *values, **attributes)


def _run_nodes(nodes: Sequence, env: dict, opset: int) -> None:
  for node in nodes:
    try:
      values = [env[name] if name else None for name in node.input]
      outputs = _call(node, OPS[node.op_type], values, _attributes(node), opset)
    except errors.UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except  (a graph we misread: say where)
      raise NodeError(f'node {node.name!r} ({node.op_type}) failed: {type(error).__name__}: '
                      f'{str(error).splitlines()[0] if str(error) else ""}') from None
    if not isinstance(outputs, tuple):
      outputs = (outputs,)
    for name, value in zip(node.output, outputs):
      if name:
        env[name] = np.asarray(value) if isinstance(value, np.generic) else value


def convert(model) -> Converted:
  """`model` (an `onnx.ModelProto`) as a pure JAX function; a `UserError` names the operators
  it does not support."""
  found = unsupported_operators(model)
  if found:
    raise errors.UserError(f'unsupported ONNX operator(s): {describe_unsupported(found)}')
  graph, opset = model.graph, opset_version(model)
  constants, params = {}, {}
  for proto in graph.initializer:
    array = _tensor(proto)
    if np.issubdtype(array.dtype, np.floating):
      params[proto.name] = array
    else:
      constants[proto.name] = array
  inputs = [v for v in graph.input if v.name not in constants and v.name not in params]
  input_names = tuple(v.name for v in inputs)
  output_names = tuple(v.name for v in graph.output)
  nodes = list(graph.node)

  def apply(parameters: dict, *arrays):
    if len(arrays) != len(input_names):
      raise ValueError(f'the graph takes {len(input_names)} input(s) {input_names}, '
                       f'got {len(arrays)}')
    env = {'': None, **constants, **parameters, **dict(zip(input_names, arrays))}
    _run_nodes(nodes, env, opset)
    return tuple(env[name] for name in output_names)

  return Converted(apply=apply, params=params, input_names=input_names,
                   input_shapes=tuple(_dims(v) for v in inputs), output_names=output_names,
                   opset=opset)
