r"""The self-explaining classifier (seed 002) on the synthetic shapes data set.

One U-Net gives the per-class masks, and its logits are the masks' spatial means: the label and
its explanation come from the same forward pass (wysiwyc/self_explainer.py). The data, U-Net,
evaluation and trainer settings are those of configs/synthetic.py, so the results.json of both
runs can be compared line by line.

Main job (train, evaluate on the test split, figures):

  python -m wysiwyc.main --config=configs/synthetic_self_explainer.py \
      --workdir=workdirs/synthetic_self_explainer

Tiny run (about a minute on 2 CPU cores):

  python -m wysiwyc.main --config=configs/synthetic_self_explainer.py:smoke --workdir=/tmp/se

Measured (2 CPU cores; see the README's "Self-explaining classifier"): it has not learnt to
classify within the budgets tried. Two epochs on the 30k-image training set
(`--config.data.synthetic.num_train=30000 --config.explainer.train.num_epochs=3
--config.explainer.train.schedule=cosine --config.explainer.train.warmup_steps=200
--config.explainer.train.decay_steps=2811`, stopped in the third) left validation per-class
accuracy at 0.712, the 'no class present' rate of the split.

Change the network through `explainer.*` (e.g. `--config.explainer.kwargs.width=32`); the
classifier fields follow it. Every loss weight is `loss.lambda_*`; 0 switches a term off.
"""

import importlib.util
import os

import ml_collections

VARIANTS = ('smoke',)


def _base_config(arg: str) -> ml_collections.ConfigDict:
  """configs/synthetic.py:get_config(arg), loaded by path as config files are."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'synthetic.py')
  spec = importlib.util.spec_from_file_location('configs_synthetic_base', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` is '' or 'smoke'."""
  for variant in filter(None, arg.split(',')):
    if variant not in VARIANTS:
      raise ValueError(f'Unknown config variant {variant!r}; choose from {list(VARIANTS)}.')
  config = _base_config(arg)
  config.mode = 'self_explainer'

  # The U-Net of configs/synthetic.py, trained with its explainer.train settings (Adam 1e-3, batch
  # 32, early stopping on the validation loss) for longer: it learns to classify from scratch.
  # A step is two U-Net passes forward and backward (teacher and student).
  config.explainer.train.num_epochs = 2 if 'smoke' in arg else 10
  config.explainer.train.max_steps = 0  # the epochs and early stopping decide
  config.explainer.train.schedule = 'constant'

  # The classifier is the U-Net itself, mean-pooled: its fields are references to explainer.*.
  config.classifier.name = 'self_explainer_head'
  config.classifier.checkpoint = ''
  config.classifier.kwargs = ml_collections.ConfigDict(
      {'explainer': config.explainer.get_ref('name'),
       **{key: config.explainer.kwargs.get_ref(key) for key in config.explainer.kwargs}})

  # The authors' InterpretableFCNN defaults (their VOC setting).
  config.loss = ml_collections.ConfigDict()
  config.loss.kind = 'self_explainer'
  config.loss.lambda_c = 1.0           # classification (BCE) of the teacher and student logits
  config.loss.lambda_similarity = 1.0  # mean |teacher logits - student logits|
  config.loss.lambda_tv = 1.0          # TV of the teacher and student target masks
  config.loss.lambda_ac = 1.0          # class-mask area constraint, both passes
  config.loss.lambda_t = 0.1           # mean target-mask area, both passes
  config.loss.lambda_nt = 0.3          # mean non-target-mask area, both passes
  config.loss.lambda_coherency = 1.0   # mean |teacher mask - student mask|
  config.loss.min_area = 0.05
  config.loss.max_area = 0.3
  return config
