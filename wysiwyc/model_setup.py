"""The stages' models, built from the config, and the weights they start from: pretrained
backbones, a shipped zoo entry, or a checkpoint of another workdir.
"""

import os
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import models
from wysiwyc import train_steps
from wysiwyc.models import shipped


def compute_dtype_kwargs(config) -> dict:
  """`{'dtype': bfloat16}` for `config.compute_dtype='bfloat16'` (parameters stay float32),
  nothing for float32, so models that take no `dtype` keep working."""
  name = config.get('compute_dtype', 'float32')
  if name == 'float32':
    return {}
  if name == 'bfloat16':
    return {'dtype': jnp.bfloat16}
  raise errors.UserError(f"compute_dtype={name!r}; choose 'float32' or 'bfloat16'.")


def build_classifier(config, spec) -> nn.Module:
  return models.classifiers.build(config.classifier.name, len(spec.class_names),
                                  **config.classifier.kwargs, **compute_dtype_kwargs(config))


def build_explainer(config, spec) -> nn.Module:
  return models.build_explainer(config.explainer.name, len(spec.class_names),
                                **config.explainer.kwargs, **compute_dtype_kwargs(config))


def build_distill_student(config, spec) -> nn.Module:
  """The black-box start's student: a SimpleCNN with the shapes of the U-Net Explainer's encoder
  (its width, norm and input stride; its depth + 1 blocks, the bottleneck included), so that
  `encoder_from_classifier` can copy its convolutions."""
  if config.explainer.name != 'unet':
    raise errors.UserError(
        f"explainer.init_from='distill' needs explainer.name='unet', got "
        f"{config.explainer.name!r}; choose another explainer.init_from.")
  kwargs = config.explainer.kwargs
  return models.classifiers.build(
      'simple_cnn', len(spec.class_names), width=kwargs.get('width', 32),
      depth=kwargs.get('depth', 3) + 1, norm=kwargs.get('norm', 'group'),
      stem_stride=kwargs.get('input_stride', 1),
      pooling=config.explainer.distill.get('pooling', 'max'), **compute_dtype_kwargs(config))


def initial_explainer_state(config, spec, explainer: nn.Module, mesh: Mesh, rng,
                            encoder_variables: Optional[dict] = None
                            ) -> Tuple[train_steps.TrainState, optax.GradientTransformation]:
  """(the explainer's first train state, its optimizer): `config.explainer.train`'s optimizer,
  the pretrained backbone weights, then `explainer.init_from` (`'classifier'` or `'distill'`:
  the encoder from `encoder_variables`, the classifier's or the distilled student's); refuses a
  batch that does not divide over the mesh."""
  tc = train_steps.with_schedule_length(config.explainer.train,
                                        spec.num_examples.get('train', 0))
  data_parallel.check_batch_size(tc.batch_size, mesh, 'explainer.train.batch_size',
                                 tc.get('grad_accum_steps', 1))
  tx = train_steps.make_optimizer(tc)
  state = data_parallel.replicate(
      train_steps.init_state(explainer, tx, rng, config.data.image_size), mesh)
  state = with_pretrained_weights(explainer, state, mesh)
  return with_initial_explainer(config, spec, state, mesh, encoder_variables), tx


def start_description(model_config) -> str:
  """What a stage's weights start from, in words (`config.classifier` or `config.explainer`):
  its `init_from`, its pretrained backbone, or random weights."""
  init_from = model_config.get('init_from', '')
  if shipped.is_zoo_reference(init_from):
    return f'shipped {init_from}'
  if init_from == CLASSIFIER_START:
    return "the classifier's convolutions (encoder), random decoder"
  if init_from == DISTILL_START:
    return 'the distilled encoder (black-box start), random decoder'
  if init_from == AUTO_START:
    return "the classifier's convolutions if they fit the encoder, else the black-box start"
  if init_from:
    return os.path.abspath(init_from)
  pretrained = model_config.kwargs.get('pretrained')
  return f'pretrained backbone ({pretrained})' if pretrained else 'random weights'


def with_pretrained_weights(model: nn.Module, state: train_steps.TrainState,
                            mesh: Mesh) -> train_steps.TrainState:
  """A fresh state with the model's pretrained weights put in (zoo backbones; others as is)."""
  variables = models.load_pretrained(model, {'params': state.params,
                                             'batch_stats': state.batch_stats})
  return data_parallel.replicate(state.replace(params=variables['params'],
                                               batch_stats=variables['batch_stats']), mesh)


def load_classifier_checkpoint(source: str, state: train_steps.TrainState, config, spec) -> dict:
  """Reads classifier variables from a shipped zoo entry ('zoo:NAME'), a workdir (its
  `classifier/best`) or an orbax folder."""
  target = {'params': state.params, 'batch_stats': state.batch_stats}
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_compatible(shipped.read_metadata(name), config, spec.class_names)
    return shipped.load(name, jax.device_get(target))
  restored = restore_stage_variables(source, 'classifier', target)
  if restored is not None:
    return restored
  raise errors.UserError(
      f'classifier.checkpoint={source!r} holds no readable classifier checkpoint. Give a '
      'wysiwyc workdir whose classifier stage finished, or an orbax checkpoint folder whose '
      "steps hold {'params', 'batch_stats'} for config.classifier.")


def restore_stage_variables(source: str, stage: str, target: dict) -> Optional[dict]:
  """The {'params', 'batch_stats'} of a workdir's `<stage>/best`, or of an orbax folder, read
  into the structure of `target`; None when neither holds a readable checkpoint of it."""
  for directory in (os.path.join(source, stage, 'best'), source):
    if os.path.isdir(directory):
      restored = checkpointing.restore_latest(checkpointing.manager(directory, 1), target)
      if restored is not None:
        return restored[0]
  return None


def with_initial_explainer(config, spec, state: train_steps.TrainState, mesh: Mesh,
                           encoder_variables: Optional[dict] = None
                           ) -> train_steps.TrainState:
  """`state` started from the explainer variables named by `config.explainer.init_from`: a
  shipped zoo entry ('zoo:NAME'), a workdir (its `explainer/best`), an orbax folder, or
  'classifier' / 'distill' (the U-Net's encoder from `encoder_variables`, the classifier's or
  the distilled student's, `encoder_from_classifier`); unchanged when it is ''."""
  source = config.explainer.get('init_from', '')
  if not source:
    return state
  target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  if source in (CLASSIFIER_START, DISTILL_START):
    if encoder_variables is None:
      raise errors.UserError(
          f"explainer.init_from={source!r} needs a classifier to start from, and this stage "
          "has none (the self-explainer trains its own); leave explainer.init_from empty.")
    started = encoder_from_classifier(target, jax.device_get(encoder_variables),
                                      config.explainer.kwargs.get('depth', 3))
    return data_parallel.replicate(state.replace(**started), mesh)
  if shipped.is_zoo_reference(source):
    name = shipped.entry_name(source)
    shipped.check_explainer_compatible(shipped.read_metadata(name), config, spec.class_names)
    return data_parallel.replicate(state.replace(**shipped.load(name, target)), mesh)
  restored = restore_stage_variables(source, 'explainer', target)
  if restored is None:
    raise errors.UserError(
        f'explainer.init_from={source!r} holds no explainer checkpoint that fits this config. '
        'Give a wysiwyc workdir (or an orbax folder) made with the same explainer.name and '
        'explainer.kwargs, or leave explainer.init_from empty to start from random weights.')
  return data_parallel.replicate(state.replace(**restored), mesh)


CLASSIFIER_START = 'classifier'
# The black-box start: the encoder of a student distilled from the classifier's predictions.
DISTILL_START = 'distill'
# CLASSIFIER_START when the classifier's convolutions fit the encoder, else DISTILL_START.
AUTO_START = 'auto'
NAMED_STARTS = (CLASSIFIER_START, DISTILL_START, AUTO_START)


def resolve_auto_start(config, explainer: nn.Module, classifier_variables: dict) -> str:
  """`explainer.init_from` with 'auto' resolved: 'classifier' when `classifier_variables` hold
  convolution blocks that fit the U-Net's encoder (a SimpleCNN of its shapes), else 'distill'."""
  source = config.explainer.get('init_from', '')
  if source != AUTO_START:
    return source
  size = config.data.image_size
  shapes = jax.eval_shape(lambda: explainer.init(jax.random.key(0),
                                                 jnp.zeros((1, size, size, 3)), train=False))
  try:
    encoder_from_classifier(
        {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})},
        classifier_variables, config.explainer.kwargs.get('depth', 3))
  except errors.UserError:
    return DISTILL_START
  return CLASSIFIER_START


AUTO_FILL = 'auto'
# `loss.fill='auto'`: how far the classifier's answer moves from the images towards a blank
# (zero) image when the images are only scaled by SCALE_PROBE (the zero fill of a mask of
# SCALE_PROBE everywhere). A classifier that normalizes each image does not move at all (0.00004
# for a group-norm SimpleCNN, 1.0 for the shipped batch-norm one): for it a faint mask keeps the
# whole image, so the removed pixels are filled with the blurred image instead.
SCALE_PROBE = 0.05
SCALE_INVARIANT_BELOW = 0.5


def scale_sensitivity(classify, images, multilabel: bool) -> float:
  """sum |p(x) - p(SCALE_PROBE * x)| / sum |p(x) - p(0)| over `images` (ImageNet-normalized) and
  classes, of the classifier's probabilities (sigmoid, or softmax when not `multilabel`): near 1
  when a faint image is to it nearly a blank one, near 0 when it is the image. A ratio, so that
  many classes of small probabilities do not make every classifier look insensitive."""
  probabilities = jax.nn.sigmoid if multilabel else jax.nn.softmax
  answer = lambda x: probabilities(classify(x))
  plain = answer(images)
  moved = jnp.abs(plain - answer(SCALE_PROBE * images)).sum()
  blanked = jnp.abs(plain - answer(jnp.zeros_like(images))).sum()
  return float(moved / jnp.maximum(blanked, 1e-12))


def fill_for_sensitivity(sensitivity: float) -> str:
  """`loss.fill` for a classifier of this `scale_sensitivity`: 'blur' when a faint image is to it
  closer to the image than to a blank one, else the paper's 'zeros'."""
  return 'blur' if sensitivity < SCALE_INVARIANT_BELOW else 'zeros'


def encoder_from_classifier(explainer_variables: dict, classifier_variables: dict,
                            depth: int) -> dict:
  """The U-Net's variables with its encoder, `ConvBlock_0`..`ConvBlock_<depth>` (the bottleneck
  included), replaced by the classifier's convolution blocks `blocks_0`.. (SimpleCNN's), which
  must have the same shapes: the explained classifier's features as the Explainer's backbone,
  as the authors' Explainer starts from a backbone trained to classify. The decoder keeps its
  fresh weights."""
  started = jax.tree.map(lambda a: a, explainer_variables)  # a copy whose dicts we may replace
  copied = []
  for level in range(depth + 1):
    ours, theirs = f'ConvBlock_{level}', f'blocks_{level}'
    if theirs not in classifier_variables.get('params', {}):
      break
    for collection in ('params', 'batch_stats'):
      mine = explainer_variables[collection].get(ours)
      given = classifier_variables.get(collection, {}).get(theirs)
      shapes = [jax.tree.map(lambda a: tuple(a.shape), tree) for tree in (mine, given)]
      if mine is None or given is None or shapes[0] != shapes[1]:
        raise errors.UserError(
            f"explainer.init_from='classifier': the classifier's block {level} does not fit the "
            f"explainer's encoder block {level} ({collection} {shapes[1]} vs {shapes[0]}). It "
            'needs classifier.name=simple_cnn with stem_stride = explainer input_stride, the same '
            "width and norm, and depth = explainer depth + 1. For any other classifier use the "
            "black-box start, explainer.init_from='distill'.")
      started[collection][ours] = given
    copied.append(level)
  if not copied:
    raise errors.UserError(
        "explainer.init_from='classifier' found no convolution blocks ('blocks_0', ...) in the "
        "classifier: it works with classifier.name=simple_cnn. For any other classifier use the "
        "black-box start, explainer.init_from='distill'.")
  return started
