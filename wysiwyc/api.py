"""The Python entry: train and evaluate an Explainer for a classifier held in memory.

    from wysiwyc import api
    apply_fn, variables, class_names = api.load_classifier('zoo:synthetic_shapes_cnn')
    # or a classifier from any framework, exported to ONNX (docs/pytorch.md):
    # apply_fn, variables, class_names = api.load_classifier('onnx:model.onnx')
    explainer = api.train_explainer(apply_fn, variables, train_batches, class_names=class_names,
                                    workdir='workdirs/mine', test_batches=test_batches)
    masks = explainer.masks(images_uint8)          # (B,H,W,C) in [0,1]
    results = api.evaluate(explainer, test_batches)              # results.json's metrics
    rise = api.evaluate(explainer, test_batches, method='rise')  # a baseline's, the same way

Image convention:
- batches (what `train_explainer` takes): dicts {'image': uint8 (B,S,S,3) RGB in 0..255,
  'labels': (B,C) multi-hot in {0,1} (one-hot for a single-label classifier), optional
  'masks': (B,S,S,C) per-class ground truth in {0,1} (bool or integers)}, as an iterable of such
  dicts or a `tf.data.Dataset` of them; every image the same square size S.
- `apply_fn(variables, images) -> logits (B,C)`: it is given float32 ImageNet-normalized images,
  `(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`, as the command line's classifiers are; `variables`
  stay frozen and are only passed to it (the default start, the black-box one, only calls it).

The run is the command line's Explainer stage: the batches are stored in `<workdir>/data` (the
'arrays' data set, `wysiwyc.data.arrays`) and read by the same input pipeline; the black-box
start's distillation, the Explainer's jitted, sharded steps and loop (`stages.explainer_stage`,
`loop.fit`), and the evaluation on `test_batches` (`evaluation.evaluate_and_report`: results.json,
results.md, figures) are the main job's. A second call with the same arguments resumes or reuses
the workdir; `wysiwyc.explain.load(workdir, apply_fn=apply_fn)` reads it.
"""

import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np

from wysiwyc import runtime
runtime.quiet_native_logs([])  # Before the imports below load TensorFlow: no load-time notices.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import attribution
from wysiwyc import checkpointing
from wysiwyc import classifier_check
from wysiwyc import config_check
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import evaluation
from wysiwyc import explain
from wysiwyc import models
from wysiwyc import onnx_classifier
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc.data import arrays
from wysiwyc.models import shipped

# What `classifier.checkpoint` says in a workdir trained by `train_explainer`.
GIVEN_CLASSIFIER = 'given in Python (wysiwyc.api.train_explainer)'
# The share of the training batches' images kept for validation when none are given.
VALIDATION_FRACTION = 0.1


def default_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """The config `train_explainer` starts from: configs/synthetic.py's `blackbox` variant (its
  networks and the paper's loss, the black-box start `explainer.init_from='distill'`, the
  single-class term `loss.lambda_single=0.3` and its 1500-step budget), the command line's recipe
  for a classifier that can only be called; its `smoke` variant with the same start when `smoke`.
  """
  config = config_check.config_module('synthetic').get_config('smoke' if smoke else 'blackbox')
  config.explainer.init_from = 'distill'
  config.loss.lambda_single = 0.3
  config.data.name = 'arrays'
  del config.data['synthetic']
  config.data.arrays = arrays.default_arrays_config()
  config.classifier.name = classifier_check.FUNCTION_CLASSIFIER
  config.classifier.kwargs = ml_collections.ConfigDict()
  config.classifier.checkpoint = GIVEN_CLASSIFIER
  return config


def load_classifier(reference: str, **onnx_convention) -> Tuple[Callable, dict, Tuple[str, ...]]:
  """(apply_fn, variables, class names) of a shipped classifier ('zoo:NAME') or of an ONNX file
  ('onnx:PATH'), for `train_explainer`; `apply_fn` takes ImageNet-normalized float32 images.

  For an ONNX file, `onnx_convention` holds `onnx_classifier.load`'s keywords: layout ('auto',
  'NCHW', 'NHWC'), normalization of what the model takes ('imagenet', 'unit', 'pixels'),
  outputs ('logits', 'probabilities') and multilabel (how probabilities become logits). Its
  class names are the file's metadata 'class_names' (a JSON list) if it has them, else
  'class_0', 'class_1', ... (None when the graph does not say its number of classes)."""
  if reference.startswith(onnx_classifier.PREFIX):
    return _load_onnx_classifier(reference[len(onnx_classifier.PREFIX):], **onnx_convention)
  if not shipped.is_zoo_reference(reference):
    raise errors.UserError(f"load_classifier({reference!r}): give 'zoo:NAME' (shipped: "
                           f"{', '.join(shipped.available())}) or 'onnx:PATH'.")
  name = shipped.entry_name(reference)
  metadata = shipped.read_metadata(name)
  class_names = tuple(metadata['class_names'])
  module = models.classifiers.build(metadata['classifier']['name'], len(class_names),
                                    **metadata['classifier']['kwargs'])
  size = int(metadata.get('data', {}).get('image_size', 64))
  target = module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  target = {'params': target['params'], 'batch_stats': target.get('batch_stats', {})}
  variables = shipped.load(name, jax.device_get(target))
  return (lambda v, images: module.apply(v, images, train=False)), variables, class_names


def _load_onnx_classifier(path: str, **convention) -> Tuple[Callable, dict, Tuple[str, ...]]:
  loaded = onnx_classifier.load(path, field='load_classifier', **convention)
  return loaded.apply_fn, loaded.variables, onnx_classifier.class_names(path)


def collect_batches(batches, what: str, num_classes: Optional[int] = None,
                    size: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The batches' arrays concatenated: {'image' uint8 (N,S,S,3), 'labels' uint8 (N,C)[,
  'class_masks' uint8 (N,S,S,C)]}; a batch that breaks the module's image convention is a
  one-line `UserError` naming it."""
  if hasattr(batches, 'as_numpy_iterator'):  # a tf.data.Dataset
    batches = batches.as_numpy_iterator()
  images, labels, masks = [], [], []
  for index, batch in enumerate(batches):
    where = f'{what}[{index}]'
    if not isinstance(batch, dict) or 'image' not in batch or 'labels' not in batch:
      keys = f' with keys {sorted(batch)}' if isinstance(batch, dict) else ''
      raise errors.UserError(f"{where}: expected a dict with 'image' and 'labels' (and optional "
                             f"'masks'); got {type(batch).__name__}{keys}.")
    image = np.asarray(batch['image'])
    if image.dtype != np.uint8:
      raise errors.UserError(f"{where}['image']: expected uint8 RGB in 0..255, got {image.dtype} "
                             '(normalized floats? give the uint8 pixels; the classifier gets them '
                             'normalized).')
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] != image.shape[2]:
      raise errors.UserError(f"{where}['image']: expected square RGB images (B,S,S,3), got shape "
                             f'{image.shape}; resize them to one square size first.')
    size = size or image.shape[1]
    if image.shape[1] != size:
      raise errors.UserError(f"{where}['image']: images of size {image.shape[1]}, the earlier ones "
                             f'(or the other batches) {size}; give every image the same size.')
    label = np.asarray(batch['labels'])
    num_classes = num_classes or (label.shape[-1] if label.ndim == 2 else None)
    if label.shape != (len(image), num_classes) or not np.isin(label, (0, 1)).all():
      raise errors.UserError(f"{where}['labels']: expected multi-hot (B,C)=({len(image)}, "
                             f'{num_classes}) in {{0,1}}, got shape {label.shape}.')
    if 'masks' in batch:
      mask = np.asarray(batch['masks'])
      if mask.shape != image.shape[:3] + (num_classes,) or not np.isin(mask, (0, 1)).all():
        raise errors.UserError(f"{where}['masks']: expected per-class masks (B,S,S,C)="
                               f'{image.shape[:3] + (num_classes,)} in {{0,1}}, got shape '
                               f'{mask.shape}.')
      masks.append(mask.astype(np.uint8))
    images.append(image)
    labels.append(label.astype(np.uint8))
  if not images:
    raise errors.UserError(f'{what}: no batches.')
  if masks and len(masks) != len(images):
    raise errors.UserError(f"{what}: {len(masks)} of {len(images)} batches have 'masks'; give "
                           'them for every batch or for none.')
  collected = {'image': np.concatenate(images), 'labels': np.concatenate(labels)}
  if masks:
    collected['class_masks'] = np.concatenate(masks)
  return collected


def _class_names(class_names, num_classes, found: int) -> Tuple[str, ...]:
  if class_names is None:
    class_names = [f'class_{i}' for i in range(num_classes or found)]
  if len(class_names) != found or (num_classes and num_classes != found):
    raise errors.UserError(f'The labels have {found} classes; class_names/num_classes say '
                           f'{len(class_names) if class_names else num_classes}.')
  return tuple(class_names)


def _check_apply_fn(apply_fn: Callable, variables, size: int, num_classes: int) -> None:
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  try:
    logits = jax.eval_shape(apply_fn, variables, images)
  except Exception as error:  # pylint: disable=broad-except  (the user's function failed)
    raise errors.UserError(f'apply_fn(variables, images) fails on float32 images (2,{size},{size},'
                           f'3): {type(error).__name__}: {error}'.splitlines()[0]) from None
  if getattr(logits, 'shape', None) != (2, num_classes):
    raise errors.UserError(f'apply_fn(variables, images) must return logits (B,C)=(2, '
                           f'{num_classes}); it returned {getattr(logits, "shape", logits)}.')


def train_explainer(apply_fn: Callable, variables: Any, train_batches: Iterable[dict], *,
                    workdir: str, class_names: Optional[Sequence[str]] = None,
                    num_classes: Optional[int] = None, multilabel: bool = True,
                    validation_batches: Optional[Iterable[dict]] = None,
                    test_batches: Optional[Iterable[dict]] = None,
                    config: Optional[ml_collections.ConfigDict] = None,
                    overrides: Optional[Dict[str, Any]] = None,
                    retrain: str = '') -> explain.Explainer:
  """Trains an Explainer against `apply_fn(variables, images) -> logits` into `workdir` and
  returns it loaded (`wysiwyc.explain.Explainer`: `.masks(uint8 images)`, `.predict`).

  Batches follow the module's image convention. `multilabel`: sigmoid outputs and multi-hot
  labels (False: a softmax classifier, one class an image). Without `validation_batches`, the last
  10% of the training images validate. With `test_batches` (with 'masks' for the mask metrics),
  results.json holds the main job's metrics. `config`: `default_config()` unless given;
  `overrides`: {'explainer.train.max_steps': 300, ...}. `retrain='explainer'` trains it again in a
  workdir trained with other settings (as the command line's --retrain).
  """
  workdir = os.path.abspath(workdir)
  checkpointing.check_directory(workdir)
  splits = {'train': collect_batches(train_batches, 'train_batches')}
  found, size = splits['train']['labels'].shape[1], splits['train']['image'].shape[1]
  if validation_batches is not None:
    splits['validation'] = collect_batches(validation_batches, 'validation_batches', found, size)
  else:
    count = len(splits['train']['image'])
    cut = max(1, int(round(count * VALIDATION_FRACTION)))
    splits['validation'] = {k: v[count - cut:] for k, v in splits['train'].items()}
    splits['train'] = {k: v[:count - cut] for k, v in splits['train'].items()}
  if test_batches is not None:
    splits['test'] = collect_batches(test_batches, 'test_batches', found, size)
  if not multilabel and any((s['labels'].sum(-1) != 1).any() for s in splits.values()):
    raise errors.UserError('multilabel=False: every image needs exactly one class in its labels.')
  class_names = _class_names(class_names, num_classes, found)
  _check_apply_fn(apply_fn, variables, size, found)
  config = (config or default_config()).copy_and_resolve_references()
  for field, value in (overrides or {}).items():
    if config_check.unknown_config_field(config, field):
      raise errors.UserError(config_check.unknown_config_field(config, field))
    node = config
    *parents, leaf = field.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  config.data.image_size = int(size)
  config.data.arrays.root = os.path.join(workdir, 'data')
  config.data.data_dir = os.path.join(workdir, 'data', 'tfds')
  run_setup.check_workdir_config(config, workdir, retrain)
  for field in ('explainer.train.batch_size', 'explainer.distill.batch_size'):
    batch_size = config[field.split('.')[0]][field.split('.')[1]].batch_size
    if (field.startswith('explainer.distill') and config.explainer.init_from != 'distill'):
      continue
    if len(splits['train']['image']) < batch_size:
      raise errors.UserError(f"train_batches hold {len(splits['train']['image'])} training images,"
                             f' fewer than one batch of {batch_size} ({field}); give more or '
                             f"overrides={{'{field}': N}}.")
  mesh = data_parallel.create_mesh()
  arrays.write(config.data.arrays.root, splits, class_names, multilabel)
  spec = train.prepare_data(config.data)
  run_setup.clear_retrained_stages(workdir, retrain)
  run_setup.write_workdir_description(config, spec, workdir)
  classifier = classifier_check.FunctionClassifier(apply_fn)
  best = os.path.join(workdir, 'classifier', 'best')
  if not os.path.isdir(best) or not os.listdir(best):
    checkpointing.save(checkpointing.manager(best, max_to_keep=1), 0, jax.device_get(variables),
                       {'source': GIVEN_CLASSIFIER})
  classifier_variables = data_parallel.replicate(variables, mesh)
  rng = jax.random.key(config.seed)
  explainer, explainer_variables = stages.explainer_stage(
      config, spec, workdir, mesh, classifier, classifier_variables, jax.random.fold_in(rng, 2))
  evaluation.evaluate_and_report(config, spec, workdir, mesh, classifier, classifier_variables,
                                 explainer, explainer_variables)
  return explain.load(workdir, apply_fn=apply_fn, variables=variables)


def evaluate(explainer: explain.Explainer, test_batches, *, method: str = '',
             method_kwargs: Optional[Dict[str, Any]] = None,
             batch_size: Optional[int] = None) -> dict:
  """The metrics of results.json (the paper's protocol, `evaluation.score_batch`, next to the
  reference masks; class specificity; the classifier's accuracies) of `explainer`'s masks, or
  with `method` (a name of `wysiwyc.attribution.METHODS`, with `method_kwargs`) of that method's
  maps for `explainer`'s classifier, on `test_batches` (the module's image convention, at the
  explainer's image size; 'masks' for the mask metrics). `batch_size`: the workdir's
  `eval.batch_size` unless given; with it, an Explainer's numbers are those of its
  results.json on the same images."""
  collected = collect_batches(test_batches, 'test_batches', len(explainer.class_names))
  size = collected['image'].shape[1]
  if size != explainer.image_size:
    raise errors.UserError(f'test_batches: images of size {size}; this explainer works at '
                           f'{explainer.image_size} (resize them first).')
  if method and method not in attribution.METHODS:
    raise errors.UserError(f'method={method!r}; choose one of '
                           f'{", ".join(sorted(attribution.METHODS))}.')
  batch_size = batch_size or int(explainer.config.eval.batch_size)
  mesh = data_parallel.create_mesh()
  masked = 'class_masks' in collected
  class_masks = collected.get('class_masks', np.zeros(
      collected['image'].shape[:3] + collected['labels'].shape[1:], np.uint8))
  classifier, multilabel = explainer.classifier, explainer.multilabel
  if method:
    view = attribution.Classifier(classifier, multilabel=multilabel)
    make = lambda _, images: attribution.METHODS[method](view, explainer.classifier_variables,
                                                         images, **(method_kwargs or {}))
  else:
    make = lambda variables, images: jax.nn.sigmoid(
        explainer.explainer.apply(variables, images, train=False))
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  step = jax.jit(lambda ev, cv, batch: evaluation.score_batch(
      make(ev, batch['image']), classifier, cv, batch, multilabel),
                 in_shardings=(repl, repl, data), out_shardings=data)
  totals = evaluation.Totals(multilabel)
  count = len(collected['image'])
  for start in range(0, count, batch_size):
    rows = slice(start, min(start + batch_size, count))
    pad = batch_size - (rows.stop - rows.start)
    padded = lambda a: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
    masks = padded(class_masks[rows]).astype(np.float32)
    batch = {'image': explain.normalize(padded(collected['image'][rows])),
             'labels': padded(collected['labels'][rows]).astype(np.float32),
             'class_masks': masks, 'foreground': masks.max(-1),
             'valid': np.arange(batch_size) < rows.stop - rows.start}
    sharded = data_parallel.shard_batch(batch, mesh)
    (scores, extras), valid = data_parallel.fetch_global(
        (step(explainer.explainer_variables, explainer.classifier_variables, sharded),
         sharded['valid']))
    totals.add(scores, extras, valid)
  results = totals.results(masked=masked)
  if method:
    results[method] = results.pop('explainer')
  return evaluation.without_nan(results)
