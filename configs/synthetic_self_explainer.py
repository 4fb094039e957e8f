r"""The self-explaining classifier on the synthetic shapes data set.

One U-Net gives the per-class masks, and its logits are the masks' spatial means: the label and
its explanation come from the same forward pass (wysiwyc/self_explainer.py). The data, U-Net and
evaluation are those of configs/synthetic.py but for the changes below (30k training images,
batch norm, logit_scale, lambda_c), so the results.json of both runs compare line by line.

Main job (train, evaluate on the test split, figures):

  python -m wysiwyc.main --config=configs/synthetic_self_explainer.py \
      --workdir=workdirs/synthetic_self_explainer

Tiny run (about a minute on 2 CPU cores):

  python -m wysiwyc.main --config=configs/synthetic_self_explainer.py:smoke --workdir=/tmp/se

Measured (2 CPU cores; docs/self_explainer.md): 70 minutes; test split: its own per-class
accuracy 0.990 (the separate classifier: 0.979); its masks merged iou@0.5 0.293, per-class 0.277,
class specificity other/own 0.036. Its U-Net is shipped as the Explainer's start,
zoo:synthetic_shapes_unet (experiments/train_zoo_explainer.py).

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

  # The U-Net of configs/synthetic.py with two changes that a mean-pooled head needs (measured
  # with classification alone, 1000 steps of 32 images of the 30k set, validation per-class
  # accuracy): batch instead of group norm, because group norm standardizes each image's features
  # over H,W, so their spatial mean, the logit, says almost nothing about the image (0.712, the
  # 'no class' rate, vs 0.770; no norm: 0.720); logit_scale=10, because the logit of a class
  # whose objects cover 5% of the image is 5% of their mask logits (0.800 vs 0.770).
  config.explainer.kwargs.norm = 'batch'
  config.explainer.kwargs.logit_scale = 10.0
  # Trained from random weights: this run is what the Explainer's shipped starting weights
  # (configs/synthetic.py, explainer.init_from) are made from.
  config.explainer.init_from = ''
  config.explainer.train.max_steps = 0  # the epochs and early stopping decide
  if 'smoke' in arg:
    config.explainer.train.num_epochs = 2
    config.explainer.train.schedule = 'constant'
  else:
    # The shipped classifier learnt from 30,000 images over 10 epochs (cosine decay); so does
    # this one. A step is two U-Net passes forward and backward (teacher and student).
    config.data.synthetic.num_train = 30_000
    config.explainer.train.num_epochs = 10
    config.explainer.train.patience = 10
    config.explainer.train.schedule = 'cosine'
    config.explainer.train.warmup_steps = 200
    config.explainer.train.decay_steps = 9370  # 10 epochs of 937 steps

  # The classifier is the U-Net itself, mean-pooled: its fields are references to explainer.*.
  config.classifier.name = 'self_explainer_head'
  config.classifier.checkpoint = ''
  config.classifier.kwargs = ml_collections.ConfigDict(
      {'explainer': config.explainer.get_ref('name'),
       **{key: config.explainer.kwargs.get_ref(key) for key in config.explainer.kwargs}})

  # The authors' InterpretableFCNN defaults (their VOC setting), but for lambda_c.
  config.loss = ml_collections.ConfigDict()
  config.loss.kind = 'self_explainer'
  # classification (BCE) of the teacher and student logits. The authors use 1 with an ImageNet
  # backbone; a U-Net from scratch at 1 never left the 'no class' rate (500 steps: training
  # BCE 0.611, validation accuracy 0.712): the mask terms' gradients drown the classification's.
  # At 10 it learns about as fast as with classification alone (BCE 0.555 vs 0.52, 0.739 vs 0.746).
  config.loss.lambda_c = 10.0
  config.loss.lambda_similarity = 1.0  # mean |teacher logits - student logits|
  config.loss.lambda_tv = 1.0          # TV of the teacher and student target masks
  config.loss.lambda_ac = 1.0          # class-mask area constraint, both passes
  config.loss.lambda_t = 0.1           # mean target-mask area, both passes
  config.loss.lambda_nt = 0.3          # mean non-target-mask area, both passes
  config.loss.lambda_coherency = 1.0   # mean |teacher mask - student mask|
  config.loss.min_area = 0.05
  config.loss.max_area = 0.3
  return config
