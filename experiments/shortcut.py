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
3. runs the Explainer and the baselines of the comparison (`wysiwyc.compare`: its builders and
   the flags of experiments/compare_methods.py: --num_images, --batch_size, --rise_masks, ...)
   on the first --num_images aligned test images, and for every (image, cued class present)
   pair takes the class's map's share of mass on the cue and on the object;
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

The measures, reports and figure are `wysiwyc.shortcut_probe`; the methods and their options are
the comparison harness's (`wysiwyc.compare`).
"""

import os
import sys
from typing import Callable, Dict, Optional

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from wysiwyc import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import checkpointing
from wysiwyc import config_check
from wysiwyc import compare as harness
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import explain
from wysiwyc import run_setup
from wysiwyc import shortcut_probe as probe
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import synthetic

FLAGS = flags.FLAGS
# --workdir, --num_images, --batch_size, --methods, --seed and the methods' settings: the
# comparison's flags (those of experiments/compare_methods.py).
harness.define_option_flags()
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
SLOW_METHODS = ('real_time_saliency',) + harness.SLOW_METHODS


def load_config(variant: str) -> ml_collections.ConfigDict:
  """configs/synthetic.py:<variant>."""
  return config_check.config_module('synthetic', os.path.join(REPO, 'configs')).get_config(variant)


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


def method_options(**overrides) -> Dict[str, object]:
  """The comparison's options: the flags' values (their defaults when not parsed)."""
  names = tuple(harness.DEFAULT_OPTIONS)
  values = {n: (FLAGS[n].value if FLAGS.is_parsed() else FLAGS[n].default) for n in names}
  return {**values, **overrides}


def run(workdir: str, *, smoke: bool = False, slow: bool = False, explainer_steps: int = 0,
        deletion_fraction: float = 0.05, eval_examples: int = 0, classifiers_only: bool = False,
        **overrides) -> dict:
  """The whole benchmark into `workdir` (overrides: the comparison's options); its report."""
  options = method_options(**overrides)
  names = options['methods'] or list(FAST_METHODS + (SLOW_METHODS if slow else ()))
  unknown = [m for m in names if m not in harness.METHOD_BUILDERS
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
  split_data = {split: probe.load_split(data_config, split, 0, batch_size)
                for split in ('test', synthetic.SWAPPED_SPLIT)}
  classifiers = probe.measure_classifiers(classify, split_data, num_cued, batch_size)
  settings = {'workdir': workdir, 'accuracy_images': len(split_data['test']['image']),
              'smoke': smoke, 'device': harness._device()}  # pylint: disable=protected-access
  if classifiers_only:
    report = {'classifiers': classifiers, 'settings': settings}
    checkpointing.write_json_atomic(os.path.join(workdir, 'shortcut_classifiers.json'), report)
    return report
  data = {k: v[:options['num_images'] or None] for k, v in split_data['test'].items()}
  pairs = probe.cued_pairs(data, num_cued)
  if not len(pairs):
    raise errors.UserError('No aligned test image shows a cued class with its cue; raise '
                           '--num_images.')
  regions = probe.pair_regions(data, pairs)
  pair_images = data['image'][pairs[:, 0]]
  key = jax.random.key(options['seed'])
  results: Dict[str, Dict[str, dict]] = {}
  figure_maps: Dict[str, Dict[str, np.ndarray]] = {}
  for method in names:
    results[method], figure_maps[method] = {}, {}
    for name, model in loaded.items():
      ctx = probe.method_context(model, os.path.join(workdir, name), [method], options)
      fn = harness.METHOD_BUILDERS[method](ctx)
      maps = harness.run_in_batches(fn, data, batch_size, jax.random.fold_in(key, 1))
      pair_maps = maps[pairs[:, 0], :, :, pairs[:, 1]]
      row = probe.shares(pair_maps, regions)
      row['deletion_drop'] = probe.deletion_drop(
          classify[name], pair_images, probe.top_pixels(pair_maps, deletion_fraction),
          pairs[:, 1])
      results[method][name] = row
      figure_maps[method][name] = pair_maps[:options['figure_images']]
      print(f'{method} / {name}: ' + ', '.join(f'{k} {v:.3f}' for k, v in row.items()),
            flush=True)
  uniform = probe.shares(np.ones(regions.shape[:1] + regions.shape[2:], np.float32), regions)
  references = {'uniform': {'shortcut': uniform, 'control': uniform}}
  for label, index in (('cue mask', 0), ('object mask', 1)):
    references[label] = {name: {'deletion_drop': probe.deletion_drop(
        classify[name], pair_images, regions[:, index] > 0.5, pairs[:, 1])}
        for name in loaded}
  settings.update({
      'num_images': len(data['image']), 'num_pairs': len(pairs),
      'cued_classes': [loaded['shortcut'].class_names[c] for c in range(num_cued)],
      'methods': names, 'deletion_fraction': deletion_fraction,
      'explainer_steps': int(configs['shortcut'].explainer.train.max_steps)})
  report = {'methods': results, 'classifiers': classifiers, 'references': references,
            'settings': settings}
  probe.write_reports(workdir, report)
  probe.save_figure(data, pairs, figure_maps, loaded['shortcut'].class_names,
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
  with open(os.path.join(os.path.abspath(FLAGS.workdir), 'shortcut.md')) as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main)
