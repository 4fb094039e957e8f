"""A classifier that cannot be imported or loaded (wysiwyc.classifier_check): module missing,
factory signature wrong, variables that do not fit the module; one line and exit 2 on the command
line (`wysiwyc.main`, `wysiwyc.explain`) and in `explain.load`, the workdir left as found."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import REPO, fabricate_workdir, smoke_config
from tests.test_run_setup import file_hashes
from wysiwyc import checkpointing
from wysiwyc import classifier_check
from wysiwyc import errors
from wysiwyc import explain
from wysiwyc import models

USER_MODULE = textwrap.dedent('''
    from wysiwyc.models import classifiers

    def make_model(num_classes, **kwargs):
      return classifiers.SimpleCNN(num_classes=num_classes, **kwargs)

    def no_arguments():
      return classifiers.SimpleCNN(num_classes=3)
''')


@pytest.fixture(scope='module')
def user_dir(tmp_path_factory):
  """A folder with `wysiwyc_user_models.py` (not on sys.path unless a test puts it there)."""
  folder = tmp_path_factory.mktemp('user')
  (folder / 'wysiwyc_user_models.py').write_text(USER_MODULE)
  return str(folder)


def run_main(workdir, data_dir, *overrides, pythonpath=''):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, pythonpath) if p))
  return subprocess.run(
      [sys.executable, '-m', 'wysiwyc.main', '--config=configs/synthetic.py:smoke',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result, *phrases):
  output = result.stdout + result.stderr
  assert result.returncode == 2, output[-3000:]
  errors_ = [line for line in output.splitlines() if line.startswith('error: ')]
  assert len(errors_) == 1 and 'Traceback' not in output, output[-3000:]
  for phrase in phrases:
    assert phrase in errors_[0], errors_[0]


def test_build_names_each_problem(user_dir, monkeypatch):
  with pytest.raises(errors.UserError, match="module 'wysiwyc_no_such_module' cannot be "
                                             'imported.*PYTHONPATH'):
    classifier_check.build('wysiwyc_no_such_module:make', 3)
  monkeypatch.syspath_prepend(user_dir)
  with pytest.raises(errors.UserError, match="has no function 'missing'"):
    classifier_check.build('wysiwyc_user_models:missing', 3)
  with pytest.raises(errors.UserError, match=r'cannot be called as factory\(num_classes=3\)'):
    classifier_check.build('wysiwyc_user_models:no_arguments', 3)
  module = classifier_check.build('wysiwyc_user_models:make_model', 3, width=4, depth=1)
  with pytest.raises(errors.UserError, match='does not run'):
    classifier_check.variable_shapes(module.clone(pooling='median'), 16)
  shapes = classifier_check.variable_shapes(module, 16)
  assert shapes['params/head/kernel'] == (4, 3)
  assert classifier_check.mismatch(shapes, shapes) is None
  other = dict(shapes, **{'params/head/kernel': (4, 5)})
  assert classifier_check.mismatch(shapes, other) == (
      'params/head/kernel is (4, 5) in the checkpoint, (4, 3) in the module')


def test_main_job_stops_in_one_line_and_leaves_the_workdir_as_found(tmp_path, user_dir):
  data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  before = file_hashes(str(workdir))
  # Module missing (its folder not on PYTHONPATH), found before the data is prepared.
  result = run_main(workdir, data_dir, '--config.classifier.name=wysiwyc_user_models:make_model')
  assert_one_line_error(result, "module 'wysiwyc_user_models' cannot be imported", 'PYTHONPATH')
  # The factory cannot be called with num_classes and the config's kwargs.
  result = run_main(workdir, data_dir, '--config.classifier.name=wysiwyc_user_models:no_arguments',
                    pythonpath=user_dir)
  assert_one_line_error(result, 'cannot be called as factory(num_classes=')
  # Variables that do not fit the module: a checkpoint of a wider head (7 classes, not 4).
  config = smoke_config(data_dir)
  wrong = models.classifiers.build(config.classifier.name, 7, **config.classifier.kwargs)
  size = config.data.image_size
  variables = wrong.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  checkpoint = str(tmp_path / 'ckpt')
  checkpointing.save(checkpointing.manager(checkpoint, 1), 0,
                     {'params': variables['params'],
                      'batch_stats': variables.get('batch_stats', {})}, {})
  result = run_main(workdir, data_dir, f'--config.classifier.checkpoint={checkpoint}')
  assert_one_line_error(result, 'do not fit the classifier module', 'params/head/')
  assert file_hashes(str(workdir)) == before
  assert sorted(os.listdir(workdir)) == ['notes.txt']


def test_explain_reports_an_unloadable_classifier_in_one_line(tmp_path):
  config = smoke_config(str(tmp_path))
  workdir = str(tmp_path / 'w')
  fabricate_workdir(workdir, config, ['a', 'b', 'c'])
  before = file_hashes(workdir)
  path = os.path.join(workdir, 'config.json')
  saved = json.loads(open(path).read())
  # Variables that do not fit: the config now names a wider classifier than the one saved.
  wider = json.loads(json.dumps(saved))
  wider['classifier']['kwargs']['width'] = 2 * saved['classifier']['kwargs'].get('width', 32)
  checkpointing.write_text_atomic(path, json.dumps(wider))
  with pytest.raises(errors.UserError, match="classifier.*do not fit the classifier module"):
    explain.load(workdir)
  missing = dict(saved, classifier=dict(saved['classifier'], name='wysiwyc_nowhere:make'))
  checkpointing.write_text_atomic(path, json.dumps(missing))
  with pytest.raises(errors.UserError, match="config.json: classifier.name='wysiwyc_nowhere"):
    explain.load(workdir)
  image = tmp_path / 'x.png'
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.new('RGB', (8, 8)).save(image)
  before = file_hashes(workdir)
  result = subprocess.run(
      [sys.executable, '-m', 'wysiwyc.explain', f'--workdir={workdir}',
       f'--out={tmp_path / "out"}', str(image)], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert_one_line_error(result, "module 'wysiwyc_nowhere' cannot be imported")
  assert file_hashes(workdir) == before
