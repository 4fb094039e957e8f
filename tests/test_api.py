"""The Python entry (wysiwyc.api): the README's snippet runs (at smoke size) into a workdir that
`explain.load` reads and that holds valid results; batches that break the image convention are
one-line errors before anything is written."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from wysiwyc import api
from wysiwyc import errors
from wysiwyc import explain


def readme_snippet() -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  snippet = next(block for block in blocks if 'api.train_explainer' in block)
  assert len(snippet.strip().splitlines()) <= 20
  return snippet


def test_readme_snippet_runs_at_smoke_size(tmp_path, capfd):
  snippet = readme_snippet()
  workdir = str(tmp_path / 'api')
  smoke = snippet.replace("'workdirs/api'", repr(workdir)).replace(
      'workdirs/api/', workdir + '/')
  smoke = smoke.replace("workdir=", 'config=api.default_config(smoke=True), workdir=')
  smoke = smoke.replace("batches('train', 6000)", "batches('train', 64)").replace(
      "batches('validation', 500)", "batches('validation', 32)").replace(
          "batches('test', 500)", "batches('test', 32)")
  assert smoke.count('smoke=True') == 1 and '6000' not in smoke and '500)' not in smoke
  namespace = {}
  exec(compile(smoke, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['masks'].shape == (6, 64, 64, 6)
  assert 0 <= namespace['masks'].min() and namespace['masks'].max() <= 1
  assert os.path.getsize(os.path.join(workdir, 'new_masks.png')) > 0

  def no_constant(name):
    raise ValueError(f'results.json holds {name}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.loads(f.read(), parse_constant=no_constant)
  assert 0 <= results['explainer']['iou@0.5'] <= 1
  assert results['classifier']['num_test_images'] == 32
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['explainer']['init_from'] == 'distill'  # the black-box start by default
  assert os.path.isdir(os.path.join(workdir, 'distill'))
  # The workdir is read back with the function; without it, one line says what to give.
  loaded = explain.load(workdir, apply_fn=namespace['apply_fn'])
  np.testing.assert_allclose(loaded.masks(namespace['images']), namespace['masks'], atol=1e-6)
  with pytest.raises(errors.UserError, match='apply_fn=apply_fn'):
    explain.load(workdir)
  # evaluate: the numbers of results.json on the same test images, and a baseline's beside them.
  test_batches = list(namespace['batches']('test', 32))
  scored = api.evaluate(loaded, test_batches)
  for method in ('explainer', 'all_1', 'ground_truth'):
    for metric in ('iou@0.5', 'cont_iou', 'per_class_iou@0.5', 'saliency'):
      assert scored[method][metric] == pytest.approx(results[method][metric], abs=1e-5), (
          method, metric)
  for metric in ('specificity_own', 'specificity_other_over_own'):
    assert scored['explainer'][metric] == pytest.approx(results['explainer'][metric], abs=1e-5)
  assert scored['classifier'] == pytest.approx(results['classifier'], abs=1e-5)
  # A second call with the same arguments reuses the workdir's stages.
  capfd.readouterr()
  again = api.train_explainer(
      namespace['apply_fn'], namespace['variables'], list(namespace['batches']('train', 64)),
      class_names=namespace['class_names'], config=api.default_config(smoke=True),
      validation_batches=list(namespace['batches']('validation', 32)),
      test_batches=test_batches, workdir=workdir)
  err = capfd.readouterr().err
  for stage in ('distill', 'explainer'):
    assert f'{stage}: finished in this workdir earlier' in err, err[-2000:]
  np.testing.assert_allclose(again.masks(namespace['images']), namespace['masks'], atol=1e-6)
  baseline = api.evaluate(loaded, test_batches, method='gradients')
  assert 'explainer' not in baseline and 0 <= baseline['gradients']['iou@0.5'] <= 1
  with pytest.raises(errors.UserError, match="method='nope'; choose one of"):
    api.evaluate(loaded, test_batches, method='nope')


def batch(count=4, size=16, classes=3, **changes):
  rng = np.random.default_rng(0)
  values = {'image': rng.integers(0, 256, (count, size, size, 3)).astype(np.uint8),
            'labels': np.eye(classes, dtype=np.float32)[np.arange(count) % classes]}
  values.update(changes)
  return values


@pytest.mark.parametrize('batches, message', [
    ([batch(image=np.zeros((4, 16, 16, 3), np.float32))], r"train_batches\[0\]\['image'\]: "
     'expected uint8 RGB in 0..255, got float32'),
    ([batch(), batch(size=24)], r"train_batches\[1\]\['image'\]: images of size 24, the earlier "
     'ones'),
    ([batch(image=np.zeros((4, 16, 12, 3), np.uint8))], r'expected square RGB images'),
    ([batch(labels=np.full((4, 3), 0.5))], r"train_batches\[0\]\['labels'\]: expected multi-hot"),
    ([batch(masks=np.zeros((4, 16, 16)))], r"\['masks'\]: expected per-class masks"),
    ([batch(masks=np.zeros((4, 16, 16, 3))), batch()], r"1 of 2 batches have 'masks'"),
    ([(np.zeros((4, 16, 16, 3), np.uint8),)], r"expected a dict with 'image' and 'labels'"),
    ([], 'no batches'),
])
def test_batches_outside_the_image_convention_are_refused(tmp_path, batches, message):
  workdir = tmp_path / 'w'
  with pytest.raises(errors.UserError, match=message):
    api.train_explainer(lambda v, x: x.mean((1, 2)), {}, batches, workdir=str(workdir))
  assert not workdir.exists()


def test_an_apply_fn_that_does_not_give_logits_is_refused(tmp_path):
  with pytest.raises(errors.UserError, match=r'must return logits \(B,C\)=\(2, 3\)'):
    api.train_explainer(lambda v, x: x.mean((1, 2, 3)), {}, [batch()],
                        workdir=str(tmp_path / 'w'))
  with pytest.raises(errors.UserError, match='apply_fn.*fails on float32 images'):
    api.train_explainer(lambda v, x: v['missing'], {}, [batch()], workdir=str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_default_config_is_the_blackbox_recipe_of_the_command_line():
  path = os.path.join(REPO, 'configs', 'synthetic.py')
  spec = importlib.util.spec_from_file_location('synthetic_config_for_api_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  blackbox = module.get_config('blackbox')
  config = api.default_config()
  assert config.explainer.to_dict() == blackbox.explainer.to_dict()
  assert config.loss.to_dict() == blackbox.loss.to_dict()
  assert config.explainer.init_from == 'distill' and config.loss.lambda_single == 0.3
  assert api.default_config(smoke=True).explainer.init_from == 'distill'


def test_importing_the_api_prints_nothing():
  result = subprocess.run([sys.executable, '-c', 'from wysiwyc import api'], capture_output=True,
                          text=True, cwd=REPO, check=True,
                          env={k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'})
  assert result.stdout == '' and result.stderr == '', result.stderr
