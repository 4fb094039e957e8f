"""Masks for new images from a trained workdir.

Python:

  from wysiwyc import explain
  explainer = explain.load('workdirs/synthetic')
  masks = explainer.masks(images)        # uint8 (B,H,W,3) in 0..255, any size -> (B,H,W,C) in [0,1]
  probs = explainer.predict(images)      # (B,C) class probabilities

Command line (per image: a figure `<name>.png` and the scores `<name>.json`; the workdir is only
read; one line per image on stdout, one per problem on stderr; `--verbosity=1` adds the libraries'
logs):

  python -m wysiwyc.explain --workdir=workdirs/synthetic --out=explanations img1.png img2.jpg
"""

import functools
import json
import os
import sys
from typing import List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from wysiwyc import checkpointing
from wysiwyc import classifier_check
from wysiwyc import errors
from wysiwyc import image_files
from wysiwyc import models
from wysiwyc import onnx_classifier
from wysiwyc import runtime
from wysiwyc import viz
# The pipelines' normalization, from a module that does not load TensorFlow (wysiwyc.data does).
from wysiwyc.attribution.common import IMAGENET_MEAN, IMAGENET_STD


class Explainer:
  """A trained explainer and its frozen classifier, read from a workdir.

  Image convention: `masks` and `predict` take uint8 RGB pixels in 0..255, one image (H,W,3) or
  a batch (B,H,W,3) (an array, or a list of images of one shape), any size: they are resized to
  the workdir's image size and ImageNet-normalized here (`normalize`). Float images are refused
  in one line, as are lists of images of different shapes. The modules themselves
  (`self.classifier`, `self.explainer`, and `wysiwyc.attribution`'s methods) take the normalized
  float32 images.
  """

  def __init__(self, config: ml_collections.ConfigDict, spec: dict, classifier, classifier_vars,
               explainer, explainer_vars):
    self.config = config
    self.class_names: Tuple[str, ...] = tuple(spec['class_names'])
    self.image_size: int = int(spec['image_size'])
    self.multilabel: bool = bool(spec['multilabel'])
    # The modules and variables themselves, for tools that need more than masks (baselines).
    self.classifier, self.classifier_variables = classifier, classifier_vars
    self.explainer, self.explainer_variables = explainer, explainer_vars
    self._segment = jax.jit(lambda v, x: explainer.apply(v, x, train=False))
    self._classify = jax.jit(lambda v, x: classifier.apply(v, x, train=False))

  def _prepare(self, images) -> Tuple[np.ndarray, bool]:
    if isinstance(images, (list, tuple)):
      shapes = sorted({tuple(np.shape(image)) for image in images})
      if len(shapes) > 1:
        raise errors.UserError(f'Images of different shapes in one list: {shapes}; give one '
                               'image at a time, or resize them to one size first.')
    images = np.asarray(images)
    single = images.ndim == 3
    if single:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise errors.UserError(f'Expected uint8 RGB images of shape (H,W,3) or (B,H,W,3); got '
                             f'shape {images.shape}. Convert grayscale/RGBA to RGB first.')
    if images.dtype != np.uint8:
      raise errors.UserError(f'Expected dtype uint8 (0..255); got {images.dtype}. Scale and cast '
                             'with np.clip(x, 0, 255).astype(np.uint8).')
    if min(images.shape[1:3]) < 1:
      raise errors.UserError(f'Empty image of shape {images.shape[1:3]}.')
    resized = np.stack([resize_uint8(im, self.image_size) for im in images])
    return normalize(resized), single

  def masks(self, images) -> np.ndarray:
    """Per-class masks in [0,1] at each input's size: (B,H,W,C), or (H,W,C) for one image."""
    inputs, single = self._prepare(images)
    height, width = np.asarray(images).shape[-3:-1]
    logits = self._segment(self.explainer_variables, inputs)
    masks = jax.image.resize(jax.nn.sigmoid(logits),
                             (logits.shape[0], height, width, logits.shape[-1]), 'bilinear')
    masks = np.clip(np.asarray(masks), 0.0, 1.0)
    return masks[0] if single else masks

  def predict(self, images) -> np.ndarray:
    """Class probabilities (B,C) (sigmoid if multi-label, else softmax), or (C,) for one image."""
    inputs, single = self._prepare(images)
    logits = self._classify(self.classifier_variables, inputs)
    probs = jax.nn.sigmoid(logits) if self.multilabel else jax.nn.softmax(logits)
    probs = np.asarray(probs)
    return probs[0] if single else probs


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (antialiased) resize of one uint8 RGB image to size x size."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def normalize(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 RGB (..., 3) in 0..255 -> float32 ImageNet-normalized, `(x/255 - mean)/std`: what the
  classifiers, the Explainer and `wysiwyc.attribution` take."""
  if np.asarray(images_uint8).dtype != np.uint8:
    raise errors.UserError(f'normalize takes uint8 pixels in 0..255; got '
                           f'{np.asarray(images_uint8).dtype}.')
  mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
  return ((images_uint8.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _restore_variables(directory: str, module, image_size: int, what: str, workdir: str) -> dict:
  if not os.path.isdir(directory):
    raise errors.UserError(
        f'{workdir} has no trained {what} ({directory} is missing). Train it first: python -m '
        f'wysiwyc.main --config=<config> --workdir={workdir}')
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  target = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, train=False))
  target = {'params': target['params'], 'batch_stats': target.get('batch_stats', {})}
  restored = checkpointing.restore_latest(checkpointing.manager(directory, 1, create=False),
                                          target)
  if restored is None:
    raise errors.UserError(f'{directory} holds no readable {what} checkpoint; re-run training '
                           f'for {workdir}.')
  variables = restored[0]
  return {k: v for k, v in variables.items() if k == 'params' or v}


def load(workdir: str, apply_fn=None, variables=None) -> Explainer:
  """Loads the explainer and classifier of a trained workdir (read only).

  A workdir whose classifier is an ONNX file (`classifier.onnx`) reads the file at the path it
  recorded, and refuses it if its sha256 changed. A workdir trained by
  `wysiwyc.api.train_explainer` against a classifier given as a function needs that function
  again, `apply_fn(variables, images) -> logits` (ImageNet-normalized float32
  images); its variables are read from the workdir unless `variables` is given."""
  workdir = os.path.abspath(workdir)
  for name in ('config.json', 'spec.json'):
    if not os.path.exists(os.path.join(workdir, name)):
      raise errors.UserError(f'{workdir} is not a wysiwyc workdir ({name} is missing). Give the '
                             '--workdir of a finished `python -m wysiwyc.main` run.')
  config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, 'config.json')))
  spec = _read_json(os.path.join(workdir, 'spec.json'))
  num_classes = len(spec['class_names'])
  if config.get('mode', 'explainer') == 'self_explainer':
    # Registers its classifier head: `predict` is then the self-explainer's own classification.
    from wysiwyc import self_explainer  # pylint: disable=g-import-not-at-top,unused-import
  size = int(spec['image_size'])
  if config.classifier.name == classifier_check.FUNCTION_CLASSIFIER:
    return _load_with_function(workdir, config, spec, apply_fn, variables)
  if onnx_classifier.path_of(config):  # the recorded file, refused if it changed
    loaded = onnx_classifier.load_recorded(workdir, config, bool(spec['multilabel']))
    return _load_with_function(workdir, config, spec, loaded.apply_fn, loaded.variables)
  try:
    classifier = classifier_check.build(config.classifier.name, num_classes,
                                        **config.classifier.kwargs)
  except errors.UserError as error:
    raise errors.UserError(f'{workdir}/config.json: {error}') from None
  except ValueError as error:  # an unknown registered name
    raise errors.UserError(f'{workdir}/config.json: classifier.name: {error}') from None
  explainer = models.build_explainer(config.explainer.name, num_classes,
                                     **config.explainer.kwargs)
  classifier_check.check_checkpoint_fits(
      classifier, size, os.path.join(workdir, 'classifier', 'best'),
      f"{workdir}'s classifier (classifier.name={config.classifier.name!r} in its config.json)")
  explainer_vars = _restore_variables(os.path.join(workdir, 'explainer', 'best'), explainer, size,
                                      'explainer', workdir)
  classifier_vars = _restore_variables(os.path.join(workdir, 'classifier', 'best'), classifier,
                                       size, 'classifier', workdir)
  return Explainer(config, spec, classifier, classifier_vars, explainer, explainer_vars)


def _load_with_function(workdir: str, config, spec: dict, apply_fn, variables) -> Explainer:
  """`load` of a workdir whose classifier was given as a function (`wysiwyc.api`)."""
  if apply_fn is None:
    raise errors.UserError(
        f'{workdir} was trained against a classifier given as a function '
        '(wysiwyc.api.train_explainer): load it in Python with explain.load(workdir, '
        'apply_fn=apply_fn).')
  explainer = models.build_explainer(config.explainer.name, len(spec['class_names']),
                                     **config.explainer.kwargs)
  size = int(spec['image_size'])
  explainer_vars = _restore_variables(os.path.join(workdir, 'explainer', 'best'), explainer, size,
                                      'explainer', workdir)
  if variables is None:
    directory = os.path.join(workdir, 'classifier', 'best')
    mngr = checkpointing.manager(directory, 1, create=False)
    steps = mngr.all_steps() if os.path.isdir(directory) else []
    if not steps:
      raise errors.UserError(f'{directory} holds no classifier variables; give them: '
                             'explain.load(workdir, apply_fn=..., variables=...).')
    variables = mngr.restore(max(steps), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state']
  return Explainer(config, spec, classifier_check.FunctionClassifier(apply_fn), variables,
                   explainer, explainer_vars)


# ----------------------------------------------------------------------------------------------
# Command line.


def read_image(path: str) -> np.ndarray:
  """Reads any PIL-readable image as uint8 RGB (`image_files.read_rgb`); refuses what cannot be
  explained, saying why."""
  return image_files.read_rgb(path)


def explain_files(explainer: Explainer, paths: Sequence[str], out_dir: str,
                  threshold: float = viz.PREDICTED_THRESHOLD) -> List[str]:
  """Writes `<name>.png` (the figure) and `<name>.json` (the scores) per image and prints one line
  naming them; returns the error messages. A multi-label classifier predicts each class whose
  probability exceeds `threshold`; a single-label (softmax) one its most probable class."""
  os.makedirs(out_dir, exist_ok=True)
  problems, used_names = [], set()
  for path in paths:
    try:
      image = read_image(path)
    except errors.UserError as error:
      problems.append(str(error))
      continue
    masks, probs = explainer.masks(image), explainer.predict(image)
    summary = scores(path, image, masks, probs, explainer.class_names, threshold,
                     explainer.multilabel)
    name = os.path.join(out_dir, _unique_name(os.path.splitext(os.path.basename(path))[0],
                                              used_names))
    checkpointing.write_text_atomic(f'{name}.json', json.dumps(summary, indent=2) + '\n')
    viz.save_figure(explanation_figure(image, masks, probs, explainer.class_names, threshold,
                                       explainer.multilabel), f'{name}.png')
    print(f'{path}: predicted {", ".join(summary["predicted"]) or "nothing"}; wrote {name}.png '
          f'and {name}.json')
  return problems


def predicted_classes(probs: np.ndarray, class_names: Sequence[str], threshold: float,
                      multilabel: bool) -> List[str]:
  """The classes a classifier predicts for one image: those with p > `threshold` (multi-label,
  sigmoid), or the most probable one (single-label, softmax: one class an image, whatever its
  p)."""
  if not multilabel:
    return [class_names[int(np.argmax(probs))]]
  return [c for c, p in zip(class_names, probs) if p > threshold]


def scores(path: str, image: np.ndarray, masks: np.ndarray, probs: np.ndarray,
           class_names: Sequence[str], threshold: float, multilabel: bool = True) -> dict:
  """The JSON of one image: the classifier's predicted classes (`predicted_classes`; 'threshold'
  is null for a single-label classifier, which predicts its top class), its probabilities and the
  masks' areas, in class order."""
  return {
      'image': os.path.abspath(path), 'height': image.shape[0], 'width': image.shape[1],
      'threshold': threshold if multilabel else None,
      'predicted': predicted_classes(probs, class_names, threshold, multilabel),
      'probabilities': {c: round(float(p), 6) for c, p in zip(class_names, probs)},
      'mask_area': {c: round(float(masks[..., i].mean()), 6) for i, c in enumerate(class_names)},
  }


def explanation_figure(image: np.ndarray, masks: np.ndarray, probs: np.ndarray,
                       class_names: Sequence[str], threshold: float, multilabel: bool = True):
  """The image and each class's mask over it (at most 160 px on the longer side), with the
  classifier's probabilities (the predicted classes in bold, as `predicted_classes` picks them);
  no ground-truth panel, a new image has none."""
  display = _display_size(image.shape[:2])
  small = np.asarray(Image.fromarray(image).resize(display[::-1], Image.BILINEAR))
  small_masks = np.asarray(jax.image.resize(masks, display + masks.shape[-1:], 'bilinear'))
  return viz.plot_class_masks(small[None], small_masks[None], None, None, probs[None],
                              class_names, threshold, multilabel)


def _display_size(shape, longest: int = 160) -> Tuple[int, int]:
  scale = longest / max(shape)
  return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _unique_name(stem: str, used: set) -> str:
  name, k = stem, 1
  while name in used:
    k += 1
    name = f'{stem}_{k}'
  used.add(name)
  return name


FLAGS = flags.FLAGS


def main(argv):
  runtime.quiet_library_logs()
  paths = argv[1:]
  if not FLAGS.workdir or not FLAGS.out or not paths:
    print('usage: python -m wysiwyc.explain --workdir=W --out=DIR IMAGE...', file=sys.stderr)
    sys.exit(2)
  try:
    with runtime.native_notices_dropped():  # a self-explainer workdir loads TensorFlow
      explainer = load(FLAGS.workdir)
  except errors.UserError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  problems = explain_files(explainer, paths, FLAGS.out)
  for problem in problems:
    print(f'error: {problem}', file=sys.stderr)
  sys.exit(1 if problems else 0)


def cli():
  """Console entry point (`wysiwyc-explain`); flags are defined here so importing is free."""
  flags.DEFINE_string('workdir', None, 'A trained wysiwyc workdir (read only).')
  flags.DEFINE_string('out', None, 'Folder for the figures (PNG) and scores (JSON).')
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing; a mistake is one line and exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  cli()
