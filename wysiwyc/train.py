"""The main job: `train_and_evaluate` runs the stages, the evaluation and the figures into a
workdir, reusing what an earlier run of the same workdir finished.
"""

import contextlib
import io
import os
import sys

import jax
import ml_collections
import tensorflow_datasets as tfds

from wysiwyc import checkpointing
from wysiwyc import console
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import evaluation
from wysiwyc import loop
from wysiwyc import run_setup
from wysiwyc import self_explainer
from wysiwyc import stages
from wysiwyc.data import catalog
from wysiwyc.data import pipeline

# What `train_and_evaluate` raises, once the interrupted stage is saved, on a preemption notice.
Preempted = loop.Preempted


def prepare_data(data_config) -> pipeline.DataSpec:
  """`pipeline.prepare`, by process 0 first: processes that share a data_dir never build the
  data set at the same time (with separate data_dirs, the others build theirs afterwards).

  TFDS's own report of a build (its "Downloading and preparing dataset" banner on stdout, its
  progress bars when the console is not a terminal) gives way to one line of ours: the data
  set, where it is, and its split sizes."""
  builder = pipeline._builder(catalog.get_adapter(data_config.name), data_config)  # pylint: disable=protected-access
  built = not builder.is_prepared()
  if not console.is_terminal(sys.stderr):
    tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    if jax.process_count() == 1:
      spec = pipeline.prepare(data_config)
    else:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      spec = pipeline.prepare(data_config) if jax.process_index() == 0 else None
      multihost_utils.sync_global_devices('wysiwyc: data prepared by process 0')
      spec = spec or pipeline.prepare(data_config)
  console.say(console.data_line(spec, builder.data_dir, built))
  return spec


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       retrain: str = '') -> dict:
  """Runs every stage (classifier, explainer, evaluation, figures) into `workdir`.

  Finished stages are reused; an interrupted stage continues from its latest checkpoint. A stage
  trained with other settings is refused before anything is written, unless `retrain` names it
  or a stage it depends on ('classifier' or 'explainer'): those stages train again.
  Returns the results dict also written to `workdir/results.json`.
  """
  workdir = os.path.abspath(workdir)
  checkpointing.check_directory(workdir)
  run_setup.check_workdir_config(config, workdir, retrain)
  config = config.copy_and_resolve_references()
  run_setup.check_inputs_available(config)  # missing data or weights: stop before writing
  mesh = data_parallel.create_mesh()
  console.say(f'devices: {jax.device_count()} ({jax.devices()[0].platform}) in '
              f'{jax.process_count()} process(es)')
  spec = prepare_data(config.data)
  run_setup.check_split_sizes(config, spec)  # still nothing written into the workdir
  run_setup.check_classifier(config, spec)  # a classifier that cannot be built or loaded
  run_setup.clear_retrained_stages(workdir, retrain)
  os.makedirs(workdir, exist_ok=True)
  run_setup.write_workdir_description(config, spec, workdir)
  rng = jax.random.key(config.seed)
  mode = config.get('mode', 'explainer')
  if mode == 'self_explainer':  # One network classifies and explains (wysiwyc/self_explainer.py).
    trained = self_explainer.self_explainer_stage(config, spec, workdir, mesh,
                                                  jax.random.fold_in(rng, 2))
  elif mode == 'explainer':
    classifier, classifier_variables = stages.classifier_stage(config, spec, workdir, mesh,
                                                               jax.random.fold_in(rng, 1))
    trained = (classifier, classifier_variables) + stages.explainer_stage(
        config, spec, workdir, mesh, classifier, classifier_variables, jax.random.fold_in(rng, 2))
  else:
    raise errors.UserError(f"Unknown mode {mode!r}; choose 'explainer' or 'self_explainer'.")
  results = evaluation.evaluate_and_report(config, spec, workdir, mesh, *trained)
  if config.get('smoke', False):
    console.say(console.SMOKE_LINE)
  console.say(console.results_line(workdir))
  return results
