"""The comparison harness: every attribution method on one trained workdir's classifier.

Longer than 400 lines because the comparison is one procedure (methods, scoring, reports, figure)
whose parts are only used together; experiments/compare_methods.py (its command line) and
experiments/shortcut.py are its clients.

  from wysiwyc import compare
  results = compare.compare('workdirs/synthetic', num_images=16)   # options: DEFAULT_OPTIONS

Runs the Explainer of the workdir, a Real-Time Saliency explainer trained against the same
frozen classifier (`W/baselines/rts`, trained here on first use, or `rts_workdir`), and every
baseline of `wysiwyc.attribution.METHODS` on the same test images, and writes to the workdir
(or `out_dir`):

  comparison.md        the table, the settings and whether the paper's findings hold here
  comparison_summary.md    the part of comparison.md that pages quote (experiments/fill_tables.py):
                       the table, how to read it and the findings
  comparison.csv       method x metric, plus seconds per image for all classes
  comparison.json      the same numbers, and the class-specificity matrices
  figures/comparison.png   images in rows, methods in columns: the masks of the image's
                       ground-truth classes merged by pixel-wise max (as the paper's Figure 2)

Metrics (means over images, or over (image, present class) pairs):
- The paper's protocol (`wysiwyc.evaluation.score_method`): merged masks of the ground-truth
  classes vs the union of the objects: iou@0.5, mean_f1, cont_f1, accuracy, auc, saliency,
  coverage; per_class_iou@0.5 compares the mask of each present class with its object.
- insertion / deletion AUC (RISE paper; insertion from a blurred image, deletion to zeros) and
  the pointing game, per (image, present class), with the class's own mask.
- Class specificity (the authors' notebook): probability of a present class keeping its own
  mask ('own') or the mask of another present class ('other'), thresholds 0.1..0.9. Lower
  'other' is more class-specific. Probabilities are the classifier's own (sigmoid for
  multi-label data; the notebook used a softmax).
- Model-randomization sanity check (Adebayo et al.): Spearman correlation between the maps of
  the trained and of a re-initialized classifier, per (image, present class), on the first
  `sanity_images` images; lower is better. Not run for the amortized explainers (Explainer,
  Real-Time Saliency), whose masks do not query the classifier at test time: they would need
  retraining against the randomized classifier.
- seconds_per_image: one call on `timing_batch_size` images with every class explained, after
  a call of the same shape compiled it (best of up to 3 calls while under a second), divided by
  the batch size.

Add a method by adding `METHOD_BUILDERS[name] = builder`, where `builder(context)` returns
`fn(images (B,H,W,3), labels (B,C), key) -> masks (B,H,W,C) in [0,1]`; `labels` are the
ground-truth classes (all ones when timing), which a method may use to skip absent classes.
Methods that query the classifier also take `variables=` (the sanity check passes the
randomized classifier's); add amortized ones to `AMORTIZED`.
"""

import csv
import dataclasses
import functools
import math
import os
import time
from typing import Callable, Dict, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wysiwyc import attribution
from wysiwyc import checkpointing
from wysiwyc import config_check
from wysiwyc import errors
from wysiwyc import evaluation
from wysiwyc import explain
from wysiwyc import metrics
from wysiwyc.attribution import common
from wysiwyc.data import pipeline

# The options of `compare()` and their defaults (OPTION_HELP says what each one does).
DEFAULT_OPTIONS = {
    'data_dir': None, 'num_images': 16, 'batch_size': 8, 'timing_batch_size': 1, 'methods': [],
    'seed': 0, 'rts_workdir': None, 'rts_steps': 0, 'self_explainer_workdir': None,
    'rise_masks': 1000, 'rise_grid': 7, 'rise_keep': 0.5,
    'ep_iterations': 100, 'ep_areas': ['0.05', '0.1', '0.2', '0.3'], 'ep_all_classes': False,
    'igos_iterations': 10, 'igos_integration_steps': 10, 'igos_all_classes': False,
    'occlusion_window': 0, 'occlusion_stride': 0, 'lime_samples': 500, 'lime_segments': 50,
    'ig_steps': 20, 'smoothgrad_samples': 20, 'insertion_steps': 8, 'sanity_images': 4,
    'figure_images': 6,
}

# What each option of `compare()` does: the help of its flag (`define_option_flags`).
OPTION_HELP = {
    'data_dir': 'TFDS data folder, if not the one in the workdir config.',
    'num_images': 'Test images (the first ones; 0 = the whole split).',
    'batch_size': 'Images per call of each method during evaluation.',
    'timing_batch_size': 'Images per timed call (every class explained).',
    'methods': 'Methods to run (default: all of METHOD_BUILDERS).',
    'seed': 'Key of the random methods and of the randomized classifier.',
    'rts_workdir': 'A trained Real-Time Saliency workdir for this classifier (default: '
                   '<workdir>/baselines/rts, trained if missing).',
    'rts_steps': "Training steps of the Real-Time Saliency explainer; 0 (default): the workdir's "
                 'Explainer training as it is (same step budget, schedule, start and early '
                 'stopping), as the paper trains both.',
    'self_explainer_workdir': 'A trained self-explainer workdir '
                              '(configs/synthetic_self_explainer.py) on the same data: its masks '
                              "are scored as the method 'self_explainer'.",
    'rise_masks': 'RISE: number of masks N (paper: 4000).',
    'rise_grid': 'RISE: grid cells per side s (paper: 7).',
    'rise_keep': 'RISE: keep probability p1 (paper: 0.5).',
    'ep_iterations': "Extremal Perturbations: iterations (paper: 800). TorchRay's schedule (lr "
                     '0.01, area weight x1.0035 per step, for 800 steps) is compressed into them:'
                     ' lr and growth scaled by 800/iterations.',
    'ep_areas': 'Extremal Perturbations: areas.',
    'ep_all_classes': 'Extremal Perturbations: optimize every class during the evaluation, not '
                      'only the ground-truth ones (timing always does).',
    'igos_iterations': 'iGOS++: iterations (paper: 15; --igos_iterations=15 '
                       "--igos_integration_steps=20 run the paper's settings).",
    'igos_integration_steps': 'iGOS++: integration steps of each path (paper: 20); the cost grows'
                              ' as iterations x steps.',
    'igos_all_classes': 'iGOS++: optimize every class during the evaluation, not only the ground-'
                        'truth ones (timing always does).',
    'occlusion_window': 'Occlusion window (0: image side / 8).',
    'occlusion_stride': 'Occlusion stride (0: window / 2).',
    'lime_samples': 'LIME: perturbed samples (LIME default: 1000).',
    'lime_segments': 'LIME: SLIC superpixels.',
    'ig_steps': 'Integrated gradients: steps (paper: 50).',
    'smoothgrad_samples': 'SmoothGrad: noisy samples (paper: 50).',
    'insertion_steps': 'Insertion/deletion: steps of the curves.',
    'sanity_images': 'Images of the model-randomization check (0: skip).',
    'figure_images': 'Rows of figures/comparison.png.',
}


def define_option_flags(flag_values=None) -> None:
  """Defines a command-line flag per option (`DEFAULT_OPTIONS`, `OPTION_HELP`) and `--workdir`,
  `--out`, skipping those already defined: the experiments that run the comparison share them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  definitions = {'workdir': (flags.DEFINE_string, None, 'A trained wysiwyc workdir (classifier and '
                             'Explainer).'),
                 'out': (flags.DEFINE_string, None, 'Output folder (default: the workdir).')}
  kinds = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           list: flags.DEFINE_list, type(None): flags.DEFINE_string}
  for name, default in DEFAULT_OPTIONS.items():
    definitions[name] = (kinds[type(default)], default, OPTION_HELP[name])
  for name, (define, default, help_text) in definitions.items():
    if name not in flag_values:
      define(name, default, help_text, flag_values=flag_values)


AMORTIZED = ('explainer', 'real_time_saliency', 'self_explainer')
# Findings of the paper checked in comparison.md.
SLOW_METHODS = ('rise', 'extremal_perturbation', 'igos_plus_plus', 'occlusion', 'lime')
SPECIFICITY_BASELINES = ('rise', 'real_time_saliency')
TABLE_COLUMNS = ('iou@0.5', 'per_class_iou@0.5', 'mean_f1', 'cont_f1', 'auc', 'saliency',
                 'insertion', 'deletion', 'pointing', 'specificity_own', 'specificity_other',
                 'sanity_rank_corr', 'seconds_per_image')


@dataclasses.dataclass
class Context:
  """What method builders can use."""
  classifier: attribution.Classifier
  classifier_variables: dict
  explainer: explain.Explainer
  image_size: int
  num_classes: int
  options: Dict[str, object]
  rts: Optional[explain.Explainer] = None
  self_explainer: Optional[explain.Explainer] = None


MethodFn = Callable[[np.ndarray, np.ndarray, jax.Array], np.ndarray]


def amortized_method(loaded: explain.Explainer) -> MethodFn:
  segment = jax.jit(lambda v, x: jax.nn.sigmoid(loaded.explainer.apply(v, x, train=False)))
  return lambda images, labels, key: segment(loaded.explainer_variables, images)


def baseline_method(name: str, **hyper) -> Callable[[Context], MethodFn]:
  """A builder for `attribution.METHODS[name]` with fixed hyperparameters."""
  def build(ctx: Context) -> MethodFn:
    method = attribution.METHODS[name]
    def run(images, labels, key, variables=None):
      del labels  # every class is explained
      variables = ctx.classifier_variables if variables is None else variables
      return method(ctx.classifier, variables, jnp.asarray(images), key=key, **hyper)
    return run
  return build


def _extremal(ctx: Context) -> MethodFn:
  areas = tuple(float(a) for a in ctx.options['ep_areas'])
  schedule = extremal_schedule(ctx.options['ep_iterations'])
  def run(images, labels, key, variables=None):
    restrict = None if ctx.options['ep_all_classes'] else labels
    variables = ctx.classifier_variables if variables is None else variables
    return attribution.METHODS['extremal_perturbation'](
        ctx.classifier, variables, jnp.asarray(images), key=key,
        areas=areas, num_iterations=ctx.options['ep_iterations'], classes=restrict, **schedule,
        chunk_size=ctx.options['batch_size'])
  return run


def extremal_schedule(iterations: int) -> Dict[str, float]:
  """TorchRay's 800-step schedule compressed into `iterations` steps."""
  scale = 800.0 / iterations
  return {'learning_rate': 0.01 * scale, 'area_weight_growth': 1.0035 ** scale}


def _igos(ctx: Context) -> MethodFn:
  def run(images, labels, key, variables=None):
    restrict = None if ctx.options['igos_all_classes'] else labels
    variables = ctx.classifier_variables if variables is None else variables
    return attribution.METHODS['igos_plus_plus'](
        ctx.classifier, variables, jnp.asarray(images), key=key,
        num_iterations=ctx.options['igos_iterations'],
        integration_steps=ctx.options['igos_integration_steps'], classes=restrict,
        chunk_size=ctx.options['batch_size'])
  return run


def _occlusion_geometry(ctx: Context):
  window = ctx.options['occlusion_window'] or max(1, ctx.image_size // 8)
  return window, ctx.options['occlusion_stride'] or max(1, window // 2)


def default_builders() -> Dict[str, Callable[[Context], MethodFn]]:
  """Every method of the comparison, in table order."""
  opt = lambda ctx, key: ctx.options[key]
  return {
      'explainer': lambda ctx: amortized_method(ctx.explainer),
      'real_time_saliency': lambda ctx: amortized_method(ctx.rts),
      'self_explainer': lambda ctx: amortized_method(ctx.self_explainer),
      'grad_cam': lambda ctx: baseline_method('grad_cam')(ctx),
      'grad_cam_plus_plus': lambda ctx: baseline_method('grad_cam_plus_plus')(ctx),
      'rise': lambda ctx: baseline_method(
          'rise', num_masks=opt(ctx, 'rise_masks'), grid_size=opt(ctx, 'rise_grid'),
          keep_probability=opt(ctx, 'rise_keep'), chunk_size=32)(ctx),
      'extremal_perturbation': _extremal,
      'igos_plus_plus': _igos,
      'occlusion': lambda ctx: baseline_method(
          'occlusion', window=_occlusion_geometry(ctx)[0], stride=_occlusion_geometry(ctx)[1],
          chunk_size=32)(ctx),
      'lime': lambda ctx: baseline_method(
          'lime', num_samples=opt(ctx, 'lime_samples'), num_segments=opt(ctx, 'lime_segments'),
          chunk_size=32)(ctx),
      'gradients': lambda ctx: baseline_method('gradients')(ctx),
      'integrated_gradients': lambda ctx: baseline_method(
          'integrated_gradients', num_steps=opt(ctx, 'ig_steps'), chunk_size=4)(ctx),
      'smoothgrad': lambda ctx: baseline_method(
          'smoothgrad', num_samples=opt(ctx, 'smoothgrad_samples'), chunk_size=4)(ctx),
      'guided_backprop': lambda ctx: baseline_method('guided_backprop')(ctx),
  }


METHOD_BUILDERS: Dict[str, Callable[[Context], MethodFn]] = default_builders()


# ----------------------------------------------------------------------------------------------
# Data and the Real-Time Saliency baseline.


def load_test_images(config: ml_collections.ConfigDict, num_images: int, batch_size: int,
                     split: str = 'test') -> Dict[str, np.ndarray]:
  """The first `num_images` (0: all) valid images of `split` as one dict of numpy arrays."""
  chunks, seen = [], 0
  dataset = pipeline.make_dataset(config.data, split, batch_size, training=False,
                                  seed=config.seed)
  for batch in pipeline.as_numpy(dataset):
    valid = batch['valid'].astype(bool)
    chunks.append({k: v[valid] for k, v in batch.items() if k != 'valid'})
    seen += int(valid.sum())
    if num_images and seen >= num_images:
      break
  data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  return {k: v[:num_images] if num_images else v for k, v in data.items()}


def _rts_variant():
  return config_check.config_module('synthetic').apply_real_time_saliency


def rts_config(config: ml_collections.ConfigDict, workdir: str, steps: int,
               num_train: int) -> ml_collections.ConfigDict:
  """The workdir's config with the Real-Time Saliency loss and its classifier frozen; trained
  like the Explainer, or for exactly `steps` steps when `steps` > 0."""
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  _rts_variant()(config)
  config.classifier.checkpoint = os.path.abspath(workdir)
  if steps:
    tc = config.explainer.train
    train_steps.set_step_budget(tc, steps)
    tc.num_epochs = max(1, math.ceil(steps / max(1, num_train // tc.batch_size)))
    tc.patience = max(tc.patience, tc.num_epochs)  # the step budget decides, not early stopping
  # Its own results.json is only a check; the comparison scores it on the comparison's images.
  config.eval.max_examples = 64
  return config


def ensure_rts(config, workdir: str, rts_workdir: Optional[str], steps: int) -> explain.Explainer:
  """Loads the Real-Time Saliency explainer, training it first if its workdir has no results."""
  from wysiwyc import train  # pylint: disable=g-import-not-at-top
  if rts_workdir:
    return explain.load(rts_workdir)
  directory = os.path.join(workdir, 'baselines', 'rts')
  if not os.path.exists(os.path.join(directory, 'results.json')):
    spec = pipeline.prepare(config.data)
    logging.info('Training the Real-Time Saliency explainer (%s) into %s.',
                 f'{steps} steps' if steps else "the Explainer's budget", directory)
    train.train_and_evaluate(rts_config(config, workdir, steps, spec.num_examples['train']),
                             directory)
  return explain.load(directory)


# ----------------------------------------------------------------------------------------------
# Scoring.


def load_self_explainer(workdir: Optional[str], reference: explain.Explainer) -> explain.Explainer:
  """The self-explainer of `workdir`; its masks are scored with the reference's classifier."""
  if not workdir:
    raise errors.UserError("Method 'self_explainer' needs --self_explainer_workdir (a finished "
                           'run of configs/synthetic_self_explainer.py).')
  loaded = explain.load(workdir)
  if (loaded.class_names, loaded.image_size) != (reference.class_names, reference.image_size):
    raise errors.UserError(
        f'{workdir} was trained on other data (classes {loaded.class_names}, size '
        f'{loaded.image_size}) than the compared workdir ({reference.class_names}, '
        f'{reference.image_size}).')
  return loaded


def make_scorers(ctx: Context, options):
  """Jitted scoring functions of one batch of maps; all shapes fixed by the batch size."""
  classifier, variables = ctx.classifier, ctx.classifier_variables
  logits = lambda x: classifier.logits(variables, x)
  probabilities = lambda x: classifier.probabilities(variables, x)
  blur_sigma = 20.0 * ctx.image_size / 224  # the insertion start, as Extremal Perturbations' blur
  tolerance = 15.0 * ctx.image_size / 224  # the pointing game's 15 px at 224

  @jax.jit
  def protocol(maps, batch):
    scores = evaluation.score_method(maps, batch, logits)
    return {k: v for k, v in scores.items() if not k.startswith('_')}

  @jax.jit
  def pair_scores(images, maps, segs, classes):
    """(P,...) pairs of (image, class): insertion, deletion, pointing and kept probabilities."""
    out = metrics.insertion_deletion(
        probabilities, images, maps, classes, num_steps=options['insertion_steps'],
        insertion_baseline=common.gaussian_blur(images, blur_sigma))
    out = {k: out[k] for k in ('insertion', 'deletion')}
    out['pointing'] = jax.vmap(functools.partial(metrics.pointing_game_hit,
                                                 tolerance=tolerance))(maps, segs)
    # (P, C): probability of every class keeping this pair's mask (thresholds 0.1..0.9).
    out['kept_probabilities'] = metrics.class_specificity(probabilities, images,
                                                          maps[..., None])[:, :, 0]
    return out

  return protocol, pair_scores


def present_pairs(labels: np.ndarray) -> np.ndarray:
  return np.argwhere(labels > 0.5)  # (P, 2): image, class


def run_in_batches(fn: MethodFn, data, batch_size: int, key) -> np.ndarray:
  """fn over the images in batches of `batch_size` (the last padded), as one (N,H,W,C) array."""
  n = len(data['image'])
  out = []
  for start in range(0, n, batch_size):
    rows = slice(start, start + batch_size)
    images, labels = data['image'][rows], data['labels'][rows]
    real = len(images)
    if real < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - real,) + images.shape[1:],
                                                images.dtype)])
      labels = np.concatenate([labels, np.zeros((batch_size - real,) + labels.shape[1:],
                                                labels.dtype)])
    maps = np.asarray(fn(images, labels, jax.random.fold_in(key, start)), np.float32)
    out.append(maps[:real])
  return np.concatenate(out)


def score_maps(maps: np.ndarray, data, scorers, batch_size: int) -> Dict[str, object]:
  """Every metric of one method's maps (N,H,W,C)."""
  protocol, pair_scores = scorers
  n = len(maps)
  per_image: Dict[str, List[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    sl = slice(start, start + batch_size)
    batch = {k: _pad(data[k][sl], batch_size) for k in ('image', 'labels', 'foreground',
                                                          'class_masks')}
    scores = jax.device_get(protocol(_pad(maps[sl], batch_size), batch))
    real = min(batch_size, n - start)
    for k, v in scores.items():
      per_image.setdefault(k, []).append(np.asarray(v)[:real])
  per_image = {k: np.concatenate(v) for k, v in per_image.items()}
  num_present = data['labels'].sum(-1)
  summary = metrics.summarize({k: v for k, v in per_image.items() if k != 'per_class_iou@0.5'})
  summary['per_class_iou@0.5'] = float(np.sum(per_image['per_class_iou@0.5'] * num_present)
                                       / max(num_present.sum(), 1))

  pairs = present_pairs(data['labels'])
  pair_out: Dict[str, List[np.ndarray]] = {}
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = _pad(chunk, batch_size)
    out = jax.device_get(pair_scores(data['image'][padded[:, 0]],
                                     maps[padded[:, 0], :, :, padded[:, 1]],
                                     data['class_masks'][padded[:, 0], :, :, padded[:, 1]],
                                     jnp.asarray(padded[:, 1], jnp.int32)))
    for k, v in out.items():
      pair_out.setdefault(k, []).append(np.asarray(v)[:len(chunk)])
  pair_out = {k: np.concatenate(v) for k, v in pair_out.items()}
  for k in ('insertion', 'deletion', 'pointing'):
    summary[k] = float(pair_out[k].mean())
  # Class specificity: [b, t, m] for present t and m, from the kept probabilities of each pair.
  num_classes = data['labels'].shape[-1]
  specificity = np.zeros((n, num_classes, num_classes), np.float64)
  for (b, m), probs in zip(pairs, pair_out['kept_probabilities']):
    specificity[b, :, m] = probs
  spec_summary = metrics.class_specificity_summary(specificity, data['labels'])
  summary['specificity_own'] = spec_summary['own']
  summary['specificity_other'] = spec_summary['other']
  summary['specificity_other_pairs'] = spec_summary['num_other_pairs']
  return summary


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the first axis to `size` by repeating the last row (results of padding are dropped)."""
  x = np.asarray(x)
  if len(x) >= size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def time_method(fn: MethodFn, images: np.ndarray, num_classes: int, key) -> float:
  """Seconds per image with every class explained: a compiling call, then the best of up to 3
  timed calls (repeated only while a call takes under a second)."""
  labels = np.ones((len(images), num_classes), np.float32)
  jax.block_until_ready(fn(images, labels, key))
  best = math.inf
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(fn(images, labels, key))
    best = min(best, time.perf_counter() - start)
    if best >= 1.0:
      break
  return best / len(images)


def sanity_correlation(fn: MethodFn, maps: np.ndarray, data, randomized_variables,
                       batch_size: int, key) -> float:
  """Mean Spearman correlation over (image, present class) pairs between the maps for the
  trained and for the randomized classifier."""
  n = len(maps)
  randomized = run_in_batches(lambda x, y, k: fn(x, y, k, variables=randomized_variables),
                              data, batch_size, key)
  pairs = present_pairs(data['labels'][:n])
  correlation = jax.jit(jax.vmap(metrics.rank_correlation))
  values = np.asarray(correlation(maps[pairs[:, 0], :, :, pairs[:, 1]],
                                  randomized[pairs[:, 0], :, :, pairs[:, 1]]))
  return float(np.nanmean(values)) if np.isfinite(values).any() else float('nan')


# ----------------------------------------------------------------------------------------------
# Reports.


def findings(results: Dict[str, dict]) -> List[str]:
  """The paper's findings, each stated with the numbers and whether it holds here."""
  lines = []
  others = [m for m in results if m != 'explainer']
  if 'explainer' in results and others:
    for metric in ('iou@0.5', 'mean_f1'):
      runner_up = max(others, key=lambda m: results[m][metric])
      holds = results['explainer'][metric] > results[runner_up][metric]  # strictly best
      lines.append(f'- Best {metric}: {"holds" if holds else "does not hold"}: explainer '
                   f'{results["explainer"][metric]:.3f}, best other {runner_up} '
                   f'{results[runner_up][metric]:.3f}.')
    t_explainer = results['explainer']['seconds_per_image']
    for method in SLOW_METHODS:
      if method in results:
        ratio = results[method]['seconds_per_image'] / t_explainer
        lines.append(f'- Explainer >= 100x faster than {method}: '
                     f'{"holds" if ratio >= 100 else "does not hold"} ({ratio:,.0f}x: '
                     f'{results[method]["seconds_per_image"]:.3g} s vs {t_explainer:.3g} s).')
    if 'grad_cam' in results:
      lines.append(f'- Time per image (all classes): explainer {t_explainer:.3g} s, grad_cam '
                   f'{results["grad_cam"]["seconds_per_image"]:.3g} s.')
    own = results['explainer']['specificity_other']
    for method in SPECIFICITY_BASELINES:
      if method in results and not math.isnan(own):
        theirs = results[method]['specificity_other']
        holds = own <= 0.5 * theirs
        lines.append(f'- Keeping another class\'s mask leaves the true class a much lower '
                     f'probability for the explainer than for {method} (at most half): '
                     f'{"holds" if holds else "does not hold"} ({own:.3f} vs {theirs:.3f}).')
  return lines


def _cell(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if isinstance(value, int):
    return str(value)
  if abs(value) >= 100 or (0 < abs(value) < 0.001):
    return f'{value:.3g}'
  return f'{value:.3f}'


def write_reports(results: Dict[str, dict], out_dir: str, settings: Dict[str, object]) -> None:
  rows = [{'method': m, **{k: results[m].get(k) for k in TABLE_COLUMNS}} for m in results]
  path = os.path.join(out_dir, 'comparison.csv')
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['method', *TABLE_COLUMNS])
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ('' if v is None else v) for k, v in row.items()})
  os.replace(path + '.tmp', path)
  checkpointing.write_json_atomic(os.path.join(out_dir, 'comparison.json'),
                                  {'settings': settings, 'results': results})
  summary = _summary_lines(rows, results, settings)
  lines = ['# Attribution methods compared', ''] + [
      "## The paper's findings here" if line == FINDINGS_HEADING else line for line in summary]
  lines += ['', '## Settings', '']
  lines += [f'- {k}: {v}' for k, v in settings.items()]
  lines += ['', 'Sanity check: the amortized explainers (explainer, real_time_saliency) do not '
            'query the classifier at test time, so re-initializing the classifier cannot change '
            'their masks without retraining them; they are marked n/a.']
  checkpointing.write_text_atomic(os.path.join(out_dir, 'comparison_summary.md'),
                                  '\n'.join(summary) + '\n')
  checkpointing.write_text_atomic(os.path.join(out_dir, 'comparison.md'), '\n'.join(lines) + '\n')


FINDINGS_HEADING = "**The paper's findings here:**"


def _summary_lines(rows, results, settings) -> List[str]:
  """What a page quotes of comparison.md (comparison_summary.md): what was compared (the
  workdir by its name, not by the folders of the machine that ran it), the table, how to read it
  and the paper's findings, without the title and the settings."""
  name = os.path.basename(os.path.normpath(settings['workdir']))
  lines = [f'Workdir `{name}`, {settings["num_images"]} test images '
           f'({settings["num_pairs"]} (image, present class) pairs), '
           f'{settings["device"]}.', '',
           '| method | ' + ' | '.join(TABLE_COLUMNS) + ' |',
           '|---|' + '---:|' * len(TABLE_COLUMNS)]
  for row in rows:
    lines.append(f'| {row["method"]} | ' + ' | '.join(_cell(row[k]) for k in TABLE_COLUMNS)
                 + ' |')
  lines += ['', 'Higher is better except deletion, saliency, specificity_other, '
            'sanity_rank_corr and seconds_per_image. n/a: not applicable (see below).', '',
            FINDINGS_HEADING, ''] + findings(results)
  return lines


def save_figure(data, all_maps: Dict[str, np.ndarray], class_names, path: str,
                num_rows: int) -> None:
  """Images in rows; columns: image, ground truth, one merged mask per method."""
  from wysiwyc import viz  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = min(num_rows, len(data['image']))
  methods = list(all_maps)
  cols = len(methods) + 2
  fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.6 * n), squeeze=False)
  images = pipeline.denormalize(data['image'][:n])
  for row in range(n):
    labels = data['labels'][row]
    axes[row, 0].imshow(images[row])
    axes[row, 0].set_ylabel(', '.join(c for c, y in zip(class_names, labels) if y > 0.5),
                            fontsize=6)
    axes[row, 1].imshow(viz.label_map_rgb(data['class_masks'][row]))
    for col, method in enumerate(methods):
      merged = np.asarray(metrics.merge_class_masks(all_maps[method][row:row + 1],
                                                    data['labels'][row:row + 1]))[0]
      axes[row, col + 2].imshow(viz.overlay(images[row], merged))
  for col, title in enumerate(['image', 'ground truth'] + methods):
    axes[0, col].set_title(title.replace('_', '\n'), fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  viz.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Entry point.


def compare(workdir: str, out_dir: Optional[str] = None, **options) -> Dict[str, dict]:
  """Runs the comparison (options: `DEFAULT_OPTIONS`, the flags of
  experiments/compare_methods.py) and writes the reports."""
  unknown_options = sorted(set(options) - set(DEFAULT_OPTIONS))
  if unknown_options:
    raise errors.UserError(f'Unknown options {unknown_options}; choose from '
                           f'{sorted(DEFAULT_OPTIONS)}.')
  options = {**DEFAULT_OPTIONS, **options}
  workdir = os.path.abspath(workdir)
  out_dir = os.path.abspath(out_dir or workdir)
  loaded = explain.load(workdir)
  config = loaded.config
  if options.get('data_dir'):
    config.data.data_dir = options['data_dir']
  names = options['methods'] or [name for name in METHOD_BUILDERS if name != 'self_explainer'
                                 or options.get('self_explainer_workdir')]
  unknown = [m for m in names if m not in METHOD_BUILDERS]
  if unknown:
    raise errors.UserError(f'Unknown methods {unknown}; choose from {list(METHOD_BUILDERS)}.')
  data = load_test_images(config, options['num_images'], options['batch_size'])
  num_classes = len(loaded.class_names)
  ctx = Context(classifier=attribution.Classifier(loaded.classifier, loaded.multilabel),
                classifier_variables=loaded.classifier_variables, explainer=loaded,
                image_size=loaded.image_size, num_classes=num_classes, options=options)
  if 'real_time_saliency' in names:
    ctx.rts = ensure_rts(config, workdir, options.get('rts_workdir'), options['rts_steps'])
  if 'self_explainer' in names:
    ctx.self_explainer = load_self_explainer(options.get('self_explainer_workdir'), loaded)
  scorers = make_scorers(ctx, options)
  key = jax.random.key(options['seed'])
  randomized = loaded.classifier.init(jax.random.fold_in(key, 12345),
                                      jnp.zeros((1,) + data['image'].shape[1:]), train=False)
  randomized = {k: v for k, v in randomized.items() if k in ('params', 'batch_stats')}
  results, all_maps = {}, {}
  timing_images = data['image'][:options['timing_batch_size']]
  for name in names:
    fn = METHOD_BUILDERS[name](ctx)
    start = time.perf_counter()
    maps = run_in_batches(fn, data, options['batch_size'], jax.random.fold_in(key, 1))
    summary = score_maps(maps, data, scorers, options['batch_size'])
    summary['seconds_per_image'] = time_method(fn, timing_images, num_classes,
                                               jax.random.fold_in(key, 2))
    sanity_n = min(options['sanity_images'], len(maps))
    summary['sanity_rank_corr'] = None
    if name not in AMORTIZED and sanity_n:
      subset = {k: v[:sanity_n] for k, v in data.items()}
      summary['sanity_rank_corr'] = sanity_correlation(
          fn, maps[:sanity_n], subset, randomized, options['batch_size'],
          jax.random.fold_in(key, 1))
    summary['wall_seconds'] = round(time.perf_counter() - start, 1)
    results[name] = summary
    all_maps[name] = maps[:options['figure_images']]
    logging.info('%s: %s', name, {k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in summary.items()})
  settings = {
      'workdir': workdir, 'num_images': len(data['image']),
      'num_pairs': int((data['labels'] > 0.5).sum()), 'device': _device(),
      'batch_size': options['batch_size'], 'timing_batch_size': options['timing_batch_size'],
      'rts_workdir': options.get('rts_workdir') or os.path.join(workdir, 'baselines', 'rts'),
      'rts_steps': options['rts_steps'] or "the Explainer's training (explainer.train)",
      'self_explainer_workdir': options.get('self_explainer_workdir'),
      'rise': f'N={options["rise_masks"]}, s={options["rise_grid"]}, p1={options["rise_keep"]}',
      'extremal_perturbation': f'areas={options["ep_areas"]}, iterations='
                               f'{options["ep_iterations"]}, '
                               f'{extremal_schedule(options["ep_iterations"])}, '
                               f'{"all" if options["ep_all_classes"] else "ground-truth"} '
                               'classes in evaluation',
      'igos_plus_plus': f'iterations={options["igos_iterations"]}, integration steps='
                        f'{options["igos_integration_steps"]}, '
                        f'{"all" if options["igos_all_classes"] else "ground-truth"} '
                        'classes in evaluation',
      'occlusion': 'window={}, stride={}'.format(*_occlusion_geometry(ctx)),
      'lime': f'samples={options["lime_samples"]}, SLIC segments={options["lime_segments"]}',
      'integrated_gradients_steps': options['ig_steps'],
      'smoothgrad_samples': options['smoothgrad_samples'],
      'insertion_steps': options['insertion_steps'], 'sanity_images': options['sanity_images'],
  }
  os.makedirs(out_dir, exist_ok=True)
  write_reports(results, out_dir, settings)
  save_figure(data, all_maps, loaded.class_names,
              os.path.join(out_dir, 'figures', 'comparison.png'), options['figure_images'])
  return results


def _device() -> str:
  device = jax.devices()[0]
  return f'{jax.device_count()} x {device.platform} ({device.device_kind}), ' \
         f'{os.cpu_count()} CPU cores'
