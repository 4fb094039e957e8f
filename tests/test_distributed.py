"""Scaling and resilience on CPU: data parallelism over simulated devices, two processes over
gloo, gradient accumulation, bfloat16 compute, the main job's results on three topologies, exact
resume after SIGKILL, SIGTERM preemption and damaged checkpoints.

JAX fixes its device count when it starts, so runs with several simulated CPU devices are
subprocesses running a worker of this file: `python -m tests.test_distributed WORKER ARGS`.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tests.conftest import REPO, load_config, smoke_config

GLOBAL_BATCH, IMAGE_SIZE, NUM_CLASSES, NUM_STEPS = 16, 16, 3, 3
# (devices, micro-batches) of the single-process runs, compared with 1 device and 1 micro-batch.
SINGLE_PROCESS_RUNS = ((1, 1), (4, 1), (8, 1), (8, 2))
SUBPROCESS_TIMEOUT_S = 240


# ------------------------------------------------------------------------------- workers


def global_batch() -> dict:
  """The fixed global batch every run trains on (images and multi-hot labels)."""
  rng = np.random.default_rng(0)
  labels = (rng.random((GLOBAL_BATCH, NUM_CLASSES)) < 0.4).astype(np.float32)
  labels[np.arange(GLOBAL_BATCH), rng.integers(0, NUM_CLASSES, GLOBAL_BATCH)] = 1.0
  images = rng.normal(size=(GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  return {'image': images, 'labels': labels}


def tiny_config(compute_dtype: str = 'float32'):
  """The smoke config's models, one level deep and 4 channels wide (fast to compile)."""
  config = load_config('synthetic', 'smoke')
  config.compute_dtype = compute_dtype
  for module in (config.classifier, config.explainer):
    module.kwargs.update(width=4, depth=1)
  # Group norm: batch norm's statistics depend on how the batch is split into micro-batches.
  config.explainer.kwargs.norm = 'group'
  return config


def key(seed: int):
  # 'rbg' keys: XLA:CPU compiles the threefry initializers 3x slower, and these tests only
  # need some fixed initialization.
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.key(seed, impl='rbg')


def explainer_steps(mesh, local_batch: dict, micro_batches: int = 1,
                    compute_dtype: str = 'float32') -> dict:
  """NUM_STEPS explainer steps against a random frozen classifier on `mesh`.

  `local_batch` is this process's rows of the global batch. Returns numpy 'losses' (per step)
  and the final 'params' (flattened by path).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from wysiwyc import data_parallel  # pylint: disable=g-import-not-at-top
  from wysiwyc import model_setup  # pylint: disable=g-import-not-at-top
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  config = tiny_config(compute_dtype)
  spec = types.SimpleNamespace(class_names=tuple('abc'))
  classifier = model_setup.build_classifier(config, spec)
  explainer = model_setup.build_explainer(config, spec)
  rng = key(0)
  classifier_variables = data_parallel.replicate(train_steps.init_state(
      classifier, train_steps.make_optimizer(config.classifier.train), key(1),
      IMAGE_SIZE).variables(), mesh)
  tx = optax.sgd(0.5)  # Unlike Adam's, its updates scale with the gradients.
  state = data_parallel.replicate(train_steps.init_state(explainer, tx, rng, IMAGE_SIZE), mesh)
  step = train_steps.jit_train_step(train_steps.make_explainer_train_step(
      explainer, classifier, tx, train_steps.explainer_loss_fn(config, multilabel=True),
      micro_batches), mesh, num_replicated_args=1)
  batch = data_parallel.shard_batch(local_batch, mesh)
  losses = []
  for _ in range(NUM_STEPS):
    state, aux = step(state, classifier_variables, batch, rng)
    losses.append(data_parallel.fetch_global(aux['loss']))
  params = data_parallel.fetch_global(state.params)
  flat = {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  return {'losses': np.asarray(losses), 'params': flat}


def _as_arrays(outcome: dict, prefix: str = '') -> dict:
  arrays = {f'{prefix}losses': outcome['losses']}
  arrays.update({f'{prefix}params{k}': v for k, v in outcome['params'].items()})
  return arrays


def worker_single_process(out: str) -> None:
  """One process with 8 simulated devices: SINGLE_PROCESS_RUNS on sub-meshes of its devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from wysiwyc import data_parallel  # pylint: disable=g-import-not-at-top
  from wysiwyc import errors  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8, jax.devices()
  arrays = {}
  for devices, micro_batches in SINGLE_PROCESS_RUNS:
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ('data',))
    data_parallel.check_batch_size(GLOBAL_BATCH, mesh, 'batch', micro_batches)
    arrays.update(_as_arrays(explainer_steps(mesh, global_batch(), micro_batches),
                             prefix=f'{devices}x{micro_batches}/'))
  refusals = []
  for batch_size, micro_batches in ((12, 1), (8, 2)):
    try:
      data_parallel.check_batch_size(batch_size, data_parallel.create_mesh(),
                                     'explainer.train.batch_size', micro_batches)
    except errors.UserError as error:
      refusals.append(str(error))
  arrays['refusals'] = np.asarray(refusals)
  np.savez(out, **arrays)


def worker_multi_process(out: str, process_id: str, port: str) -> None:
  """One of two processes (2 simulated devices each) of a gloo-connected CPU 'pod'."""
  import jax  # pylint: disable=g-import-not-at-top
  from wysiwyc import data_parallel  # pylint: disable=g-import-not-at-top
  from wysiwyc import distributed  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.distributed.update(enabled=True, coordinator_address=f'127.0.0.1:{port}',
                            num_processes=2, process_id=int(process_id), cpu_collectives='gloo')
  distributed.maybe_initialize(config)
  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
  mesh = data_parallel.create_mesh()
  # The block of every global batch that the input pipeline gives this process.
  rows = GLOBAL_BATCH // jax.process_count()
  start = data_parallel.batch_block(mesh) * rows
  local_batch = {k: v[start:start + rows] for k, v in global_batch().items()}
  assembled = data_parallel.fetch_global(data_parallel.shard_batch(local_batch, mesh))
  outcome = explainer_steps(mesh, local_batch)
  if jax.process_index() == 0:
    arrays = _as_arrays(outcome)
    arrays['assembled_image'] = assembled['image']
    np.savez(out, **arrays)


WORKERS = {'single_process': worker_single_process, 'multi_process': worker_multi_process}


# ----------------------------------------------------------------------- subprocess helpers


def _env(num_cpu_devices: int = 1) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_cpu_devices}'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _start(args, log_path: str, num_cpu_devices: int = 1) -> subprocess.Popen:
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable] + list(args), cwd=REPO, env=_env(num_cpu_devices),
                          stdout=log, stderr=subprocess.STDOUT)


def _finish(processes, timeout: float = SUBPROCESS_TIMEOUT_S):
  """Waits for every process; kills them all if any overruns `timeout`. Return codes."""
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()


def _log(path: str) -> str:
  with open(path) as f:
    return f.read()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _load(path: str, prefix: str = '') -> dict:
  with np.load(path) as data:
    return {'losses': data[f'{prefix}losses'],
            'params': {k[len(prefix) + len('params'):]: data[k] for k in data.files
                       if k.startswith(f'{prefix}params')}}


def _assert_same_training(actual: dict, expected: dict, tolerance: float, what: str) -> None:
  np.testing.assert_allclose(actual['losses'], expected['losses'], rtol=tolerance,
                             atol=tolerance, err_msg=f'{what}: losses')
  assert sorted(actual['params']) == sorted(expected['params'])
  for name, value in expected['params'].items():
    np.testing.assert_allclose(actual['params'][name], value, rtol=tolerance, atol=tolerance,
                               err_msg=f'{what}: {name}')


# --------------------------------------------------------------- data parallelism


@pytest.fixture(scope='module')
def single_process_runs(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp('single') / 'runs.npz')
  log = out + '.log'
  process = _start(['-m', 'tests.test_distributed', 'single_process', out], log,
                   num_cpu_devices=8)
  assert _finish([process]) == [0], _log(log)[-5000:]
  return out


@pytest.mark.parametrize('devices,micro_batches', SINGLE_PROCESS_RUNS[1:])
def test_devices_and_micro_batches_train_like_one_device(single_process_runs, devices,
                                                         micro_batches):
  reference = _load(single_process_runs, '1x1/')
  actual = _load(single_process_runs, f'{devices}x{micro_batches}/')
  assert reference['losses'].shape == (NUM_STEPS,)
  assert np.all(np.diff(reference['losses']) != 0)  # The steps really change the parameters.
  _assert_same_training(actual, reference, 1e-5, f'{devices} devices x {micro_batches}')


def test_batch_that_does_not_divide_is_refused(single_process_runs):
  with np.load(single_process_runs) as data:
    refusals = list(data['refusals'])
  assert len(refusals) == 2, refusals
  assert 'explainer.train.batch_size = 12 does not divide over 8 devices' in refusals[0]
  assert 'multiple of 8' in refusals[0]
  assert 'x 2 micro-batches' in refusals[1] and 'multiple of 16' in refusals[1]


def test_two_processes_over_gloo_train_like_one_process(single_process_runs, tmp_path):
  out, port = str(tmp_path / 'two.npz'), _free_port()
  logs = [str(tmp_path / f'process{i}.log') for i in range(2)]
  processes = [_start(['-m', 'tests.test_distributed', 'multi_process', out, str(i), str(port)],
                      logs[i], num_cpu_devices=2) for i in range(2)]
  codes = _finish(processes, timeout=180)
  assert codes == [0, 0], '\n'.join(_log(log)[-3000:] for log in logs)
  _assert_same_training(_load(out), _load(single_process_runs, '4x1/'), 1e-5,
                        '2 processes x 2 devices vs 1 process x 4 devices')
  with np.load(out) as data:  # Each process's block landed where it belongs in the global batch.
    np.testing.assert_array_equal(data['assembled_image'], global_batch()['image'])


# ------------------------------------------------------------------ mixed precision


def test_bfloat16_compute_keeps_float32_parameters_and_close_losses(single_process_runs):
  import jax  # pylint: disable=g-import-not-at-top
  from wysiwyc import data_parallel  # pylint: disable=g-import-not-at-top
  from wysiwyc import model_setup  # pylint: disable=g-import-not-at-top
  full = _load(single_process_runs, '1x1/')  # The same steps in float32.
  half = explainer_steps(data_parallel.create_mesh(), global_batch(), compute_dtype='bfloat16')
  assert all(v.dtype == np.float32 for v in half['params'].values())
  np.testing.assert_allclose(half['losses'], full['losses'], rtol=3e-2)
  assert not np.array_equal(half['losses'], full['losses'])  # bfloat16 really was used
  spec = types.SimpleNamespace(class_names=tuple('abc'))
  explainer = model_setup.build_explainer(tiny_config('bfloat16'), spec)
  images = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  variables = explainer.init(key(0), images)
  jaxpr = str(jax.make_jaxpr(explainer.apply)(variables, images))
  # The convolutions of the (half-resolution) U-Net's first block run in bfloat16.
  assert 'conv_general_dilated' in jaxpr and re.search(r'bf16\[1,\d+,\d+,4\]', jaxpr)
  assert explainer.apply(variables, images).dtype == np.float32


# --------------------------------------------------------- exact resume and preemption


def _main_args(workdir: str, data_dir: str) -> list:
  return ['-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.log_every_steps=1',
          '--config.classifier.train.checkpoint_every_steps=1',
          '--config.explainer.train.checkpoint_every_steps=1',
          '--config.eval.num_figure_images=1']


def _saved_steps(workdir: str, stage: str) -> list:
  """Finalized (renamed) orbax steps of a stage's latest-state manager."""
  directory = os.path.join(workdir, stage, 'checkpoints')
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _run_until_checkpoint(workdir, data_dir, stage: str, sig: int, log: str) -> int:
  """Starts the CLI, sends `sig` once `stage` has saved a step, returns the exit code."""
  process = _start(_main_args(workdir, data_dir), log)
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not _saved_steps(workdir, stage) and process.poll() is None:
      assert time.monotonic() < deadline, _log(log)[-3000:]
      time.sleep(0.02)
    process.send_signal(sig)
    return _finish([process])[0]
  finally:
    if process.poll() is None:
      process.kill()


def _loss_trace(workdir: str, stage: str) -> dict:
  """{(tag, step): value} of a stage's TensorBoard scalars; a step written again by a resumed
  run replaces the earlier record (TensorBoard's own rule)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(workdir, 'tensorboard', stage, 'events.out.tfevents.*'))
  trace = {}
  for path in sorted(files, key=lambda p: (int(os.path.basename(p).split('.')[3]), p)):
    try:
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          trace[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    except tf.errors.DataLossError:  # A record cut short by SIGKILL.
      pass
  return trace


def _history(workdir: str, stage: str) -> list:
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  meta = checkpointing.read_meta(os.path.join(workdir, stage, 'checkpoints'))
  return [{k: v for k, v in epoch.items() if k != 'seconds'} for epoch in meta['history']]


@pytest.fixture(scope='module')
def interrupted_runs(tmp_path_factory):
  """An uninterrupted CLI run, and one preempted by SIGTERM in the classifier stage, restarted,
  killed by SIGKILL in the explainer stage and restarted to the end."""
  root = tmp_path_factory.mktemp('resume')
  data_dir, reference, workdir = (str(root / n) for n in ('tfds', 'reference', 'interrupted'))
  logs = {n: str(root / f'{n}.log') for n in ('reference', 'sigterm', 'sigkill', 'final')}
  assert _finish([_start(_main_args(reference, data_dir), logs['reference'])]) == [0], (
      _log(logs['reference'])[-3000:])
  facts = {'sigterm_code': _run_until_checkpoint(workdir, data_dir, 'classifier',
                                                 signal.SIGTERM, logs['sigterm'])}
  facts['sigterm_steps'] = _saved_steps(workdir, 'classifier')
  facts['sigterm_checkpoints'] = str(root / 'sigterm_checkpoints')  # As SIGTERM left them.
  shutil.copytree(os.path.join(workdir, 'classifier', 'checkpoints'), facts['sigterm_checkpoints'])
  facts['sigkill_code'] = _run_until_checkpoint(workdir, data_dir, 'explainer', signal.SIGKILL,
                                                logs['sigkill'])
  facts['results_after_kill'] = os.path.exists(os.path.join(workdir, 'results.json'))
  facts['final_code'] = _finish([_start(_main_args(workdir, data_dir), logs['final'])])[0]
  facts['logs'] = {n: _log(p) for n, p in logs.items()}
  return reference, workdir, facts


def test_sigterm_saves_a_restorable_checkpoint_and_exits_143(interrupted_runs):
  import jax  # pylint: disable=g-import-not-at-top
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  from wysiwyc import model_setup  # pylint: disable=g-import-not-at-top
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  _, workdir, facts = interrupted_runs
  assert facts['sigterm_code'] == 143, facts['logs']['sigterm'][-3000:]
  assert 'SIGTERM received' in facts['logs']['sigterm']
  assert 'Traceback' not in facts['logs']['sigterm']
  step = facts['sigterm_steps'][-1]
  assert f'saved step {step}' in facts['logs']['sigterm']
  # Restorable as `fit` restores it (checksum verified), into the classifier's train state.
  config = smoke_config(os.path.join(workdir, 'unused'))
  with open(os.path.join(workdir, 'spec.json')) as f:
    spec = types.SimpleNamespace(class_names=json.load(f)['class_names'])
  model = model_setup.build_classifier(config, spec)
  tx = train_steps.make_optimizer(config.classifier.train)
  target = jax.eval_shape(lambda: train_steps.init_state(model, tx, jax.random.key(0),
                                                         config.data.image_size))
  restored = checkpointing.restore_latest(
      checkpointing.manager(facts['sigterm_checkpoints'], create=False), target)
  assert restored is not None and restored[2] == step
  assert int(restored[0].step) == step
  assert restored[1]['batch_in_epoch'] == (step - 1) % 4 + 1  # 4 steps per epoch
  # ... and the next run resumed from it.
  assert f'classifier: resuming from step {step} ' in facts['logs']['sigkill']


def test_sigkill_mid_epoch_then_restart_continues_exactly(interrupted_runs):
  reference, workdir, facts = interrupted_runs
  assert facts['sigkill_code'] == -signal.SIGKILL
  assert not facts['results_after_kill']
  assert facts['final_code'] == 0, facts['logs']['final'][-3000:]
  resumed = [line for line in facts['logs']['final'].splitlines()
             if 'explainer: resuming from step' in line]
  assert len(resumed) == 1, facts['logs']['final'][-3000:]
  assert 'batch 0)' not in resumed[0]  # Killed mid-epoch, resumed mid-epoch.
  for stage, steps in (('classifier', 8), ('explainer', 8)):
    expected = _loss_trace(reference, stage)
    assert {s for tag, s in expected if tag == 'train/loss'} == set(range(1, steps + 1))
    assert _loss_trace(workdir, stage) == expected, stage  # Bit-identical on CPU.
    assert _history(workdir, stage) == _history(reference, stage), stage
  with open(os.path.join(reference, 'results.json')) as f, \
      open(os.path.join(workdir, 'results.json')) as g:
    resumed, uninterrupted = json.load(g), json.load(f)
    for results in (resumed, uninterrupted):
      del results['provenance']['stage_seconds']  # wall times differ
    assert resumed == uninterrupted


@pytest.mark.skipif(not os.environ.get('WYSIWYC_SLOW_TESTS'),
                    reason='about 4 CPU-minutes; set WYSIWYC_SLOW_TESTS=1 to run')
def test_two_process_cli_preempted_on_one_host_stops_both_and_resumes(tmp_path):
  """The CLI on two gloo-connected processes: a SIGTERM to process 1 only makes both save the
  same step and exit 143; re-running both finishes. Only process 0 writes TensorBoard logs."""
  workdir, data_dir = str(tmp_path / 'work'), str(tmp_path / 'tfds')

  def start_both(tag):
    port = _free_port()
    return [_start(_main_args(workdir, data_dir) + [
        '--config.distributed.enabled=True', f'--config.distributed.process_id={i}',
        '--config.distributed.num_processes=2', '--config.distributed.cpu_collectives=gloo',
        f'--config.distributed.coordinator_address=127.0.0.1:{port}'],
        str(tmp_path / f'{tag}{i}.log')) for i in range(2)]

  processes = start_both('preempted')
  deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
  while not _saved_steps(workdir, 'explainer') and time.monotonic() < deadline:
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)
  logs = [str(tmp_path / f'preempted{i}.log') for i in range(2)]
  assert _finish(processes) == [143, 143], '\n'.join(_log(p)[-3000:] for p in logs)
  saved = [line.split('saved step ')[1].split('.')[0] for p in logs
           for line in _log(p).splitlines() if 'SIGTERM received; saved step' in line]
  assert len(saved) == 2 and saved[0] == saved[1], saved
  process0_pids = {processes[0].pid}
  processes = start_both('resumed')
  assert _finish(processes) == [0, 0], _log(str(tmp_path / 'resumed0.log'))[-3000:]
  process0_pids.add(processes[0].pid)
  for name in ('results.json', 'figures/masks.png', 'figures/training.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  writers = {int(re.search(r'\.(\d+)\.\d+\.v2$', p).group(1)) for p in glob.glob(
      os.path.join(workdir, 'tensorboard', '*', 'events.out.tfevents.*'))}
  assert writers and writers <= process0_pids


# ------------------------------------------------------------- topology-independent results

# (processes, devices per process) of the main job runs compared with 1 process x 1 device.
TOPOLOGIES = ((1, 1), (1, 4), (2, 2))
MAX_EXAMPLES = 12  # of the smoke test split's 16: one global batch of 16 with 4 padding rows
REFERENCE_METHODS = ('all_0', 'all_0.5', 'all_1', 'ground_truth')  # wysiwyc.evaluation's
# What training produced (the Explainer's masks, the classifier's logits in `saliency`) agrees
# to float rounding, grown over the steps; docs/scale.md.
TOPOLOGY_TOLERANCE = 1e-4


def _topology_args(workdir: str, data_dir: str, process_id: int, num_processes: int,
                   port: int) -> list:
  args = ['-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.eval.max_examples={MAX_EXAMPLES}',
          '--config.eval.num_figure_images=1']
  if num_processes > 1:
    args += ['--config.distributed.enabled=True', f'--config.distributed.process_id={process_id}',
             f'--config.distributed.num_processes={num_processes}',
             '--config.distributed.cpu_collectives=gloo',
             f'--config.distributed.coordinator_address=127.0.0.1:{port}']
  return args


@pytest.fixture(scope='module')
def topology_runs(tmp_path_factory) -> dict:
  """{(processes, devices): results.json} of the main job at smoke size, all runs at once."""
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('topologies')
  data_dir = str(root / 'tfds')
  pipeline.prepare(smoke_config(data_dir).data)  # Built once, before the runs read it.
  started, logs = [], []
  for processes, devices in TOPOLOGIES:
    workdir, port = str(root / f'{processes}x{devices}'), _free_port()
    for i in range(processes):
      logs.append(f'{workdir}.{i}.log')
      started.append(_start(_topology_args(workdir, data_dir, i, processes, port), logs[-1],
                            num_cpu_devices=devices))
  codes = _finish(started, timeout=2 * SUBPROCESS_TIMEOUT_S)  # 4 processes share the cores
  assert codes == [0] * len(started), '\n'.join(_log(log)[-3000:] for log in logs)
  results = {}
  for processes, devices in TOPOLOGIES:
    with open(root / f'{processes}x{devices}' / 'results.json') as f:
      results[(processes, devices)] = json.load(f)
  return results


@pytest.mark.skipif(not os.environ.get('WYSIWYC_SLOW_TESTS'),
                    reason='about 3 CPU-minutes (five smoke main jobs); set WYSIWYC_SLOW_TESTS=1 to run')
@pytest.mark.parametrize('processes,devices', TOPOLOGIES[1:])
def test_main_job_results_do_not_depend_on_the_topology(topology_runs, processes, devices):
  """The same test images, global batches and augmentation: the reference masks and the
  classifier's accuracies score exactly the same, the rest to TOPOLOGY_TOLERANCE."""
  reference, actual = topology_runs[(1, 1)], topology_runs[(processes, devices)]
  assert actual['classifier']['num_test_images'] == MAX_EXAMPLES
  assert sorted(actual) == sorted(reference)
  for method, expected in reference.items():
    if method == 'provenance':  # the devices, the wall times
      continue
    assert sorted(actual[method]) == sorted(expected), method
    for metric, value in expected.items():
      exact = method == 'classifier' or (method in REFERENCE_METHODS and metric != 'saliency')
      assert actual[method][metric] == pytest.approx(
          value, rel=0, abs=0 if exact else TOPOLOGY_TOLERANCE), (
              f'{processes} processes x {devices} devices: {method} {metric}')


# ------------------------------------------------------------------ damaged checkpoints


def _two_saved_steps(directory: str):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  target = {'w': jnp.arange(2000, dtype=jnp.float32).reshape(20, 100), 'b': jnp.ones(3)}
  mngr = checkpointing.manager(directory)
  for step in (1, 2):
    checkpointing.save(mngr, step, {k: v * step for k, v in target.items()}, {'step': step})
  return target


def _truncate_every_file(step_dir: str) -> None:
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)


def _flip_one_bit_of_array_data(step_dir: str) -> None:
  """One bit in the middle of the largest array data file: orbax itself does not notice."""
  data_files = [p for p in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                                     recursive=True) if os.path.isfile(p)]
  path = max(data_files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


@pytest.mark.parametrize('damage', [_truncate_every_file, _flip_one_bit_of_array_data],
                         ids=['truncated', 'bit_flip'])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / 'checkpoints')
  target = _two_saved_steps(directory)
  damage(os.path.join(directory, '2'))
  with caplog.at_level('WARNING'):
    state, meta, step = checkpointing.restore_latest(checkpointing.manager(directory), target)
  assert (step, meta) == (1, {'step': 1})
  np.testing.assert_array_equal(state['w'], np.asarray(target['w']))
  assert any('step 2' in r.getMessage() and 'falling back' in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_undamaged_checkpoint_restores_the_newest_step(tmp_path):
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / 'checkpoints')
  target = _two_saved_steps(directory)
  state, meta, step = checkpointing.restore_latest(checkpointing.manager(directory), target)
  assert (step, meta) == (2, {'step': 2})
  np.testing.assert_array_equal(state['w'], 2 * np.asarray(target['w']))


@pytest.mark.parametrize('name', ['area=[0.02,0.1]', 'run*', 'run?'])
def test_checkpoint_folder_with_glob_characters_is_refused(tmp_path, name):
  """Orbax globs the step folder, so it cannot read back steps saved under such a path."""
  from wysiwyc import checkpointing, errors, train  # pylint: disable=g-import-not-at-top
  directory = tmp_path / name
  with pytest.raises(errors.UserError, match=r'contains one of the characters \[ \] \* \?'):
    checkpointing.manager(str(directory / 'checkpoints'))
  with pytest.raises(errors.UserError, match='Choose a --workdir without them'):
    train.train_and_evaluate(load_config('synthetic', 'smoke'), str(directory))
  assert not directory.exists()


if __name__ == '__main__':
  WORKERS[sys.argv[1]](*sys.argv[2:])
