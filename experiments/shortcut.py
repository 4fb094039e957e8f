r"""A planted shortcut: do the explanations show the evidence the classifier really uses?

  python experiments/shortcut.py --workdir=workdirs/shortcut

Two classifiers, one recipe (configs/synthetic.py variants `shortcut` and `shortcut_control`):
the *shortcut* one is trained on data where each of the first two classes comes with a
fixed-colour square (the cue) away from its objects in every image that shows it, never
otherwise; the *control* on data where each cue is in half the images whatever their classes.
For each, this script

1. trains the main job (classifier, then the Explainer against it) into `W/shortcut` and
   `W/control`, or reuses a finished one (`results.json` there);
2. measures each classifier's accuracy on the cued classes on the shortcut data's test split
   (*aligned*: cue with its class, as in training) and its `test_swapped` split (the same
   images, each cue drawn exactly where its class is absent);
3. runs the Explainer and the baselines of experiments/compare_methods.py (its builders and
   its flags: --num_images, --batch_size, --rise_masks, ...) on the first --num_images aligned
   test images, and for every (image, cued class present) pair takes the class's map's share of
   mass on the cue and on the object (`metrics.mass_shares`);
4. deletion check: sets the top --deletion_fraction of each such map's pixels to zero (the
   mean colour) and records how much the class's probability drops, for both classifiers;

and writes `W/shortcut.md`, `W/shortcut.json` (`{"methods": {name: {"shortcut": {"cue_share",
"object_share", "deletion_drop"}, "control": {...}}}, "classifiers": {"shortcut":
{"aligned_accuracy", "swapped_accuracy", ...}, "control": {...}}, "references": ..., "settings":
...}`) and `W/figures/shortcut.png`. Reference rows: a uniform map (each region's share of the
area, the chance level), and the cue and object masks themselves (deletion of the cue alone,
of the object alone).

By default the Explainer and the gradient baselines run; --slow adds the perturbation methods
and the Real-Time Saliency explainer (trained against each classifier on first use); --methods
picks any of them. --explainer_steps sets the Explainer's step budget (0: the config's 750).
--smoke shrinks everything (tiny data and models; the test runs it end to end).

Longer than 400 lines because the benchmark's data, measurements, report and figure all work on
one layout, the (image, cued class) pairs and their cue and object regions; split apart, each
piece would have to re-derive it.
"""

import importlib.util
import os
import sys
from typing import Callable, Dict, List, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from wysiwyc import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import compare_methods
from wysiwyc import attribution
from wysiwyc import checkpointing
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import explain
from wysiwyc import metrics
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import pipeline
from wysiwyc.data import synthetic

FLAGS = flags.FLAGS
# --workdir, --num_images, --batch_size, --methods, --seed and the methods' settings are the
# flags of experiments/compare_methods.py.
flags.DEFINE_bool('smoke', False, 'Tiny data, models and budgets (a test of the plumbing).')
flags.DEFINE_bool('slow', False, 'Also run the perturbation methods and Real-Time Saliency.')
flags.DEFINE_integer('explainer_steps', 0, "The Explainer's step budget (0: the config's).")
flags.DEFINE_float('deletion_fraction', 0.05, 'Deletion check: fraction of pixels removed.')
flags.DEFINE_integer('main_job_eval_examples', 0, "Test images of the main job's own evaluation "
                     "(config.eval.max_examples; 0: the config's).")
flags.DEFINE_bool('classifiers_only', False, 'Train (or reuse) the classifier stages only and '
                  'measure their reliance on the cue; no explanations.')
FLAGS.set_default('num_images', 64)

CLASSIFIERS = {'shortcut': 'shortcut', 'control': 'shortcut_control'}  # name: config variant
FAST_METHODS = ('explainer', 'grad_cam', 'grad_cam_plus_plus', 'gradients',
                'integrated_gradients', 'smoothgrad', 'guided_backprop')
SLOW_METHODS = ('real_time_saliency',) + compare_methods.SLOW_METHODS


def load_config(variant: str) -> ml_collections.ConfigDict:
  """configs/synthetic.py:<variant>."""
  path = os.path.join(REPO, 'configs', 'synthetic.py')
  spec = importlib.util.spec_from_file_location('configs_synthetic_for_shortcut', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def classifier_config(name: str, smoke: bool, explainer_steps: int, data_dir: Optional[str],
                      eval_examples: int = 0) -> ml_collections.ConfigDict:
  """The main job's config of classifier `name` ('shortcut' or 'control')."""
  config = load_config(CLASSIFIERS[name] + (',smoke' if smoke else ''))
  if data_dir:
    config.data.data_dir = data_dir
  if explainer_steps:
    train_steps.set_step_budget(config.explainer.train, explainer_steps)
  if eval_examples:
    config.eval.max_examples = eval_examples
  return config


def ensure_classifier(config: ml_collections.ConfigDict, workdir: str) -> Callable:
  """The main job's classifier stage alone (trained, or reused when finished) in `workdir`:
  images -> probabilities."""
  run_setup.check_workdir_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = data_parallel.create_mesh()
  spec = train.prepare_data(config.data)
  run_setup.write_workdir_description(config, spec, workdir)
  module, variables = stages.classifier_stage(  # the main job's key: the same classifier
      config, spec, workdir, mesh, jax.random.fold_in(jax.random.key(config.seed), 1))
  variables = data_parallel.fetch_global(variables)
  return jax.jit(lambda x: jax.nn.sigmoid(module.apply(variables, x, train=False)))


def probabilities_of(loaded: explain.Explainer) -> Callable:
  """images -> probabilities of a trained workdir's classifier."""
  return jax.jit(lambda x: jax.nn.sigmoid(loaded.classifier.apply(
      loaded.classifier_variables, x, train=False)))


def ensure_trained(config: ml_collections.ConfigDict, workdir: str) -> explain.Explainer:
  """The finished main job in `workdir`, run first if it has no results."""
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    train.train_and_evaluate(config, workdir)
  return explain.load(workdir)


# ----------------------------------------------------------------------------------------------
# Data.


def load_split(config: ml_collections.ConfigDict, split: str, num_images: int,
               batch_size: int) -> Dict[str, np.ndarray]:
  """The first `num_images` (0: all) images of `split` through the pipeline, plus 'cue_mask'
  (H,W) from the stored records, read in the same order."""
  data = compare_methods.load_test_images(config, num_images, batch_size, split=split)
  builder = synthetic.make_builder(config.data)
  records = builder.as_dataset(split=split, shuffle_files=False).take(len(data['image']))
  raw = list(records.as_numpy_iterator())
  if not np.array_equal(np.stack([r['image'] for r in raw]), pipeline.denormalize(data['image'])):
    raise RuntimeError(f'The cue masks of {split!r} are not in the order of its images.')
  data['cue_mask'] = np.stack([r['cue_mask'][..., 0] for r in raw]).astype(np.int32)
  return data


def cued_pairs(data: Dict[str, np.ndarray], num_cued: int) -> np.ndarray:
  """(P, 2) (image, class) pairs of a cued class that is present and whose cue is drawn."""
  pairs = [(i, c) for i in range(len(data['image'])) for c in range(num_cued)
           if data['labels'][i, c] > 0.5 and np.any(data['cue_mask'][i] == c + 1)]
  return np.asarray(pairs, np.int64).reshape(-1, 2)


def pair_regions(data, pairs: np.ndarray) -> np.ndarray:
  """(P, 2, H, W) float: each pair's cue and object."""
  cue = (data['cue_mask'][pairs[:, 0]] == (pairs[:, 1] + 1)[:, None, None])
  obj = data['class_masks'][pairs[:, 0], :, :, pairs[:, 1]] > 0.5
  return np.stack([cue, obj], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Measurements.


def cued_accuracy(classify: Callable, data, num_cued: int, batch_size: int) -> Dict[str, float]:
  """Accuracy of the thresholded probabilities on the cued classes and on the others."""
  probs = np.concatenate([np.asarray(classify(data['image'][s:s + batch_size]))
                          for s in range(0, len(data['image']), batch_size)])
  correct = (probs > 0.5) == (data['labels'] > 0.5)
  return {'cued': float(correct[:, :num_cued].mean()),
          'other': float(correct[:, num_cued:].mean())}


def top_pixels(maps: np.ndarray, fraction: float) -> np.ndarray:
  """(P,H,W) bool: the top `fraction` of each map's pixels (ties in raster order)."""
  count = int(round(fraction * maps.shape[1] * maps.shape[2]))
  ranks = np.asarray(metrics.saliency_ranks(jnp.asarray(maps))).reshape(maps.shape)
  return ranks < count


def deletion_drop(classify: Callable, images: np.ndarray, removed: np.ndarray,
                  classes: np.ndarray) -> float:
  """Mean drop of the pairs' class probability when their `removed` (P,H,W) pixels are set to
  zero (the mean colour of normalized images)."""
  def probability(x):
    return np.take_along_axis(np.asarray(classify(x)), classes[:, None], axis=-1)[:, 0]
  deleted = np.where(removed[..., None], 0.0, images).astype(np.float32)
  return float(np.mean(probability(images) - probability(deleted)))


def shares(maps: np.ndarray, regions: np.ndarray) -> Dict[str, float]:
  """Mean cue and object shares of the pairs' maps (P,H,W) over their regions (P,2,H,W)."""
  values = np.asarray(jax.vmap(metrics.mass_shares)(jnp.asarray(maps), jnp.asarray(regions)))
  return {'cue_share': float(values[:, 0].mean()), 'object_share': float(values[:, 1].mean())}


def method_options(**overrides) -> Dict[str, object]:
  """compare_methods' options: its flags' values (defaults when flags are not parsed)."""
  names = compare_methods._OPTION_FLAGS  # pylint: disable=protected-access
  values = {n: (FLAGS[n].value if FLAGS.is_parsed() else FLAGS[n].default) for n in names}
  return {**values, **overrides}


def method_context(loaded: explain.Explainer, workdir: str, names: List[str],
                   options) -> compare_methods.Context:
  ctx = compare_methods.Context(
      classifier=attribution.Classifier(loaded.classifier, loaded.multilabel),
      classifier_variables=loaded.classifier_variables, explainer=loaded,
      image_size=loaded.image_size, num_classes=len(loaded.class_names), options=options)
  if 'real_time_saliency' in names:
    ctx.rts = compare_methods.ensure_rts(loaded.config, workdir, None, options['rts_steps'])
  return ctx


# ----------------------------------------------------------------------------------------------
# Reports.


def _cell(value: float) -> str:
  return f'{value:.3f}'


def reading(results) -> List[str]:
  """One line per method: where its mass goes for each classifier (larger share named)."""
  lines = []
  for method, by_classifier in results.items():
    parts = []
    for name, row in by_classifier.items():
      more = 'cue' if row['cue_share'] > row['object_share'] else 'object'
      parts.append(f'{name}: more on the {more} ({_cell(row["cue_share"])} vs '
                   f'{_cell(row["object_share"])})')
    lines.append(f'- {method}: ' + '; '.join(parts) + '.')
  return lines


def classifier_table(report: dict) -> List[str]:
  """The classifiers' accuracy on the cued classes, aligned and swapped (other classes in
  brackets)."""
  lines = ['| classifier | aligned | swapped | drop |', '|---|---:|---:|---:|']
  for name, row in report['classifiers'].items():
    lines.append(f'| {name} | {_cell(row["aligned_accuracy"])} '
                 f'({_cell(row["aligned_accuracy_other"])}) | {_cell(row["swapped_accuracy"])} '
                 f'({_cell(row["swapped_accuracy_other"])}) | '
                 f'{_cell(row["aligned_accuracy"] - row["swapped_accuracy"])} |')
  return lines


def method_table(report: dict) -> List[str]:
  """Each method's (and reference's) cue and object shares and deletion drop, per classifier."""
  lines = ['| method | shortcut: cue | shortcut: object | control: cue | control: object | '
           'shortcut: deletion | control: deletion |', '|---|---:|---:|---:|---:|---:|---:|']
  rows = {**report['methods'], **report['references']}
  for method, row in rows.items():
    s, c = row['shortcut'], row['control']
    cells = [s.get('cue_share'), s.get('object_share'), c.get('cue_share'),
             c.get('object_share'), s.get('deletion_drop'), c.get('deletion_drop')]
    lines.append(f'| {method} | ' + ' | '.join('' if v is None else _cell(v) for v in cells)
                 + ' |')
  return lines


def write_reports(out_dir: str, report: dict) -> None:
  """`shortcut.json`, `shortcut.md` and `shortcut_summary.md` (the two tables alone, for
  experiments/fill_tables.py)."""
  checkpointing.write_json_atomic(os.path.join(out_dir, 'shortcut.json'), report)
  settings = report['settings']
  deletion_note = ('Share of the class map\'s mass on the cue and on the object; deletion: drop '
                   f'of the class probability when the top {settings["deletion_fraction"]:.0%} '
                   'of the map is set to the mean colour.')
  lines = ['# A planted shortcut: cue or object?', '',
           f'{settings["num_images"]} aligned test images, {settings["num_pairs"]} (image, cued '
           f'class) pairs; {settings["device"]}.', '',
           '## The classifiers (accuracy on the cued classes; other classes in brackets)', '']
  lines += classifier_table(report)
  lines += ['', '## Where each method puts the cued class\'s mass', '', deletion_note, '']
  lines += method_table(report)
  lines += ['', 'References: *uniform* is a constant map (its shares are the areas: chance '
            'level); *cue mask* and *object mask* delete the cue or the object alone.', '',
            '## Reading', ''] + reading(report['methods'])
  lines += ['', '## Settings', ''] + [f'- {k}: {v}' for k, v in settings.items()]
  checkpointing.write_text_atomic(os.path.join(out_dir, 'shortcut.md'), '\n'.join(lines) + '\n')
  summary = (['Accuracy on the cued classes (other classes in brackets):', '']
             + classifier_table(report) + ['', deletion_note, ''] + method_table(report))
  checkpointing.write_text_atomic(os.path.join(out_dir, 'shortcut_summary.md'),
                                  '\n'.join(summary) + '\n')


def save_figure(data, pairs: np.ndarray, pair_maps: Dict[str, Dict[str, np.ndarray]],
                class_names, path: str, num_rows: int) -> None:
  """Rows: (image, cued class) pairs; columns: the image with the cue (cyan) and object (yellow)
  outlined, then each method's map of that class for each classifier."""
  from wysiwyc import viz
  import matplotlib.pyplot as plt
  n = min(num_rows, len(pairs))
  columns = [(m, c) for m in pair_maps for c in pair_maps[m]]
  fig, axes = plt.subplots(n, len(columns) + 1, figsize=(1.3 * (len(columns) + 1), 1.4 * n),
                           squeeze=False)
  images = pipeline.denormalize(data['image'][pairs[:n, 0]])
  regions = pair_regions(data, pairs[:n])
  for row in range(n):
    axes[row, 0].imshow(images[row])
    for region, colour in zip(regions[row], ('cyan', 'yellow')):
      axes[row, 0].contour(region, levels=[0.5], colors=colour, linewidths=0.8)
    axes[row, 0].set_ylabel(class_names[pairs[row, 1]], fontsize=7)
    for col, (method, name) in enumerate(columns):
      axes[row, col + 1].imshow(viz.overlay(images[row], pair_maps[method][name][row]))
  axes[0, 0].set_title('image\ncue, object', fontsize=6)
  for col, (method, name) in enumerate(columns):
    axes[0, col + 1].set_title(f'{method.replace("_", " ")}\n{name}', fontsize=6)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  viz.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Entry point.


def measure_classifiers(classifiers: Dict[str, Callable], split_data, num_cued: int,
                        batch_size: int) -> Dict[str, Dict[str, float]]:
  """Each classifier's accuracy on the cued (and other) classes, aligned and swapped."""
  out = {}
  for name, classify in classifiers.items():
    aligned = cued_accuracy(classify, split_data['test'], num_cued, batch_size)
    swapped = cued_accuracy(classify, split_data[synthetic.SWAPPED_SPLIT], num_cued, batch_size)
    out[name] = {'aligned_accuracy': aligned['cued'], 'swapped_accuracy': swapped['cued'],
                 'aligned_accuracy_other': aligned['other'],
                 'swapped_accuracy_other': swapped['other']}
  return out


def run(workdir: str, *, smoke: bool = False, slow: bool = False, explainer_steps: int = 0,
        deletion_fraction: float = 0.05, eval_examples: int = 0, classifiers_only: bool = False,
        **overrides) -> dict:
  """The whole benchmark into `workdir` (overrides: compare_methods' options); its report."""
  options = method_options(**overrides)
  names = options['methods'] or list(FAST_METHODS + (SLOW_METHODS if slow else ()))
  unknown = [m for m in names if m not in compare_methods.METHOD_BUILDERS
             or m == 'self_explainer']
  if unknown:
    raise errors.UserError(f'Unknown methods {unknown}; choose from '
                           f'{list(FAST_METHODS + SLOW_METHODS)}.')
  if not 0 < deletion_fraction < 1:
    raise errors.UserError(f'--deletion_fraction must be in (0, 1); got {deletion_fraction}.')
  workdir = os.path.abspath(workdir)
  configs = {name: classifier_config(name, smoke, explainer_steps, options['data_dir'],
                                     eval_examples) for name in CLASSIFIERS}
  # Both classifiers are measured on the shortcut data's test images.
  data_config = configs['shortcut']
  num_cued = int(data_config.data.synthetic.cue_classes)
  batch_size = options['batch_size']
  if classifiers_only:
    classify = {name: ensure_classifier(configs[name], os.path.join(workdir, name))
                for name in CLASSIFIERS}
  else:
    loaded = {name: ensure_trained(configs[name], os.path.join(workdir, name))
              for name in CLASSIFIERS}
    classify = {name: probabilities_of(model) for name, model in loaded.items()}
  split_data = {split: load_split(data_config, split, 0, batch_size)
                for split in ('test', synthetic.SWAPPED_SPLIT)}
  classifiers = measure_classifiers(classify, split_data, num_cued, batch_size)
  settings = {'workdir': workdir, 'accuracy_images': len(split_data['test']['image']),
              'smoke': smoke, 'device': compare_methods._device()}  # pylint: disable=protected-access
  if classifiers_only:
    report = {'classifiers': classifiers, 'settings': settings}
    checkpointing.write_json_atomic(os.path.join(workdir, 'shortcut_classifiers.json'), report)
    return report
  data = {k: v[:options['num_images'] or None] for k, v in split_data['test'].items()}
  pairs = cued_pairs(data, num_cued)
  if not len(pairs):
    raise errors.UserError('No aligned test image shows a cued class with its cue; raise '
                           '--num_images.')
  regions = pair_regions(data, pairs)
  pair_images = data['image'][pairs[:, 0]]
  key = jax.random.key(options['seed'])
  results: Dict[str, Dict[str, dict]] = {}
  figure_maps: Dict[str, Dict[str, np.ndarray]] = {}
  for method in names:
    results[method], figure_maps[method] = {}, {}
    for name, model in loaded.items():
      ctx = method_context(model, os.path.join(workdir, name), [method], options)
      fn = compare_methods.METHOD_BUILDERS[method](ctx)
      maps = compare_methods.run_in_batches(fn, data, batch_size, jax.random.fold_in(key, 1))
      pair_maps = maps[pairs[:, 0], :, :, pairs[:, 1]]
      row = shares(pair_maps, regions)
      row['deletion_drop'] = deletion_drop(classify[name], pair_images,
                                           top_pixels(pair_maps, deletion_fraction), pairs[:, 1])
      results[method][name] = row
      figure_maps[method][name] = pair_maps[:options['figure_images']]
      print(f'{method} / {name}: ' + ', '.join(f'{k} {v:.3f}' for k, v in row.items()),
            flush=True)
  uniform = shares(np.ones(regions.shape[:1] + regions.shape[2:], np.float32), regions)
  references = {'uniform': {'shortcut': uniform, 'control': uniform}}
  for label, index in (('cue mask', 0), ('object mask', 1)):
    references[label] = {name: {'deletion_drop': deletion_drop(
        classify[name], pair_images, regions[:, index] > 0.5, pairs[:, 1])}
        for name in loaded}
  settings.update({
      'num_images': len(data['image']), 'num_pairs': len(pairs),
      'cued_classes': [loaded['shortcut'].class_names[c] for c in range(num_cued)],
      'methods': names, 'deletion_fraction': deletion_fraction,
      'explainer_steps': int(configs['shortcut'].explainer.train.max_steps)})
  report = {'methods': results, 'classifiers': classifiers, 'references': references,
            'settings': settings}
  write_reports(workdir, report)
  save_figure(data, pairs, figure_maps, loaded['shortcut'].class_names,
              os.path.join(workdir, 'figures', 'shortcut.png'), options['figure_images'])
  return report


def main(argv):
  del argv
  if not FLAGS.workdir:
    print('usage: python experiments/shortcut.py --workdir=W [--slow] [--smoke]',
          file=sys.stderr)
    sys.exit(2)
  try:
    report = run(FLAGS.workdir, smoke=FLAGS.smoke, slow=FLAGS.slow,
                 explainer_steps=FLAGS.explainer_steps,
                 deletion_fraction=FLAGS.deletion_fraction,
                 eval_examples=FLAGS.main_job_eval_examples,
                 classifiers_only=FLAGS.classifiers_only)
  except errors.UserError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  if FLAGS.classifiers_only:
    for name, row in report['classifiers'].items():
      print(f'{name}: ' + ', '.join(f'{k} {v:.3f}' for k, v in row.items()))
    return
  print(open(os.path.join(os.path.abspath(FLAGS.workdir), 'shortcut.md')).read())


if __name__ == '__main__':
  app.run(main)
