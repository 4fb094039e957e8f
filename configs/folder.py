r"""Your own labelled images: the main job on a folder (docs/own_data.md).

  python -m wysiwyc.main --config=configs/folder.py --config.data.folder.root=DIR --workdir=W

DIR holds either one subfolder per class under train/ (validation/, test/ optional) or a manifest
(classes.txt and train.csv, optional validation.csv and test.csv with columns image,labels[,mask]);
see wysiwyc/data/folder.py. The data set is prepared once into --config.data.data_dir (default
~/tensorflow_datasets). Then, as for the synthetic data set: a classifier trained from scratch on
the folder (or yours: --config.classifier.checkpoint=DIR, a wysiwyc workdir or an orbax folder
for config.classifier; or an ONNX file from any framework: --config.classifier.onnx=model.onnx,
docs/pytorch.md), the Explainer against it, the evaluation on the test split (with masks:
the paper's protocol; without: classifier accuracy and class specificity only; no test split: no
evaluation), figures. `wysiwyc.explain.load(W)` then explains new images.

Images of any size are resized to data.image_size (64) squares. The networks are those of
configs/synthetic.py: a small CNN classifier and U-Net Explainer that suit 64x64 images and a few
thousand of them on a CPU. `configs/folder.py:resnet` or `:mixer` train a classifier of another
family (a small residual network, an MLP-Mixer) instead of the CNN.

Tiny run for tests and a first look (32x32, a few steps):

  python -m wysiwyc.main --config=configs/folder.py:smoke --config.data.folder.root=DIR \
      --workdir=/tmp/folder_smoke
"""

import importlib.util
import os

import ml_collections

from wysiwyc import onnx_classifier
from wysiwyc.data import folder

VARIANTS = ('smoke', 'resnet', 'mixer')  # the last two: configs/synthetic.py's classifier families


def _synthetic_config_module():
  """configs/synthetic.py, loaded by path as config files are."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'synthetic.py')
  spec = importlib.util.spec_from_file_location('configs_synthetic_base', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` is '' or a comma-separated list of `VARIANTS`."""
  variants = list(filter(None, arg.split(',')))
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(f'Unknown config variant {variant!r}; choose from {list(VARIANTS)}.')
  synthetic = _synthetic_config_module()
  # 'smoke' shrinks the images, networks and stages; 'resnet' or 'mixer' choose the classifier.
  config = synthetic.get_config(arg)
  config.data.name = 'folder'
  del config.data['synthetic']
  config.data.folder = folder.default_folder_config()
  # The classifier is trained on the folder from scratch (the shipped one knows only the shapes),
  # or given by --config.classifier.checkpoint.
  config.classifier.checkpoint = ''
  # Or a classifier from any framework as an ONNX file, --config.classifier.onnx=model.onnx
  # (docs/pytorch.md): loaded, not trained; classifier.name, kwargs and checkpoint are then
  # unused. onnx_layout: 'auto' (from the graph's input), 'NCHW' (torch) or 'NHWC';
  # onnx_normalization: what the model takes, 'imagenet' ((x/255 - mean)/std), 'unit' (x/255)
  # or 'pixels' (0..255); onnx_outputs: 'logits' or 'probabilities'.
  config.classifier.update(onnx_classifier.config_fields())
  # The Explainer's encoder starts from a backbone trained to classify, as the authors' does from
  # ImageNet, with no pretraining made for one data set; its decoder from random weights. 'auto':
  # the classifier's own convolutions when they fit the encoder (this config's SimpleCNN: the
  # U-Net's encoder has its shapes), else the black-box start (docs/any_classifier.md), which only
  # calls the classifier: a student of the encoder's shapes learns its predictions on the
  # folder's training images. --config.explainer.init_from=distill takes the black-box start
  # for any classifier.
  config.explainer.init_from = 'auto'
  # Not in the paper: one more classifier pass per step, on the image kept by one target class's
  # own mask, classified against that class alone (losses.explainer_loss). From the classifier's
  # convolutions, it is what pulls the class channels apart: other/own 0.145 against 0.725 with
  # the paper's loss alone on the texture folder (docs/own_data.md), 0.090 against 0.913 on the
  # synthetic shapes (docs/synthetic.md, Ablations).
  config.loss.lambda_single = 0.3
  # Not in the paper: 'auto' asks the classifier whether it answers an image scaled by 0.05 as
  # the image (it normalizes each image, e.g. group or layer norm at its input); for such a
  # classifier a zero fill removes nothing, so the pixels a mask removes are filled with the
  # blurred image ('blur'); any other classifier gets the paper's zeros (this config's SimpleCNN).
  config.loss.fill = 'auto'
  # Twice the synthetic budget: on the texture folder of docs/own_data.md, 1500 steps instead of
  # 750 give class specificity other/own 0.145 instead of 0.261 and merged iou@0.5 0.958 instead
  # of 0.941 (the same classifier). decay_steps=0: the cosine decay spans the 1500 steps.
  config.explainer.train.max_steps = 1500
  config.explainer.train.decay_steps = 0
  # A few thousand images are few for a classifier trained from scratch: random shifts of up to 4
  # px (borders mirrored) and colour jitter, the small-image recipe, on top of the flips.
  config.data.random_shift = 4
  config.data.color_jitter = 0.2
  # Global average pooling: the evidence of a class is spread over its object (a texture, a
  # part), and the average learns it faster than the synthetic classifier's max. Validation
  # per-class accuracy after 20 epochs on textures (experiments/make_texture_folder.py, a draw
  # with objects of 20-40% of the side): max pooling 0.789, average 0.837; with lr 3e-3 0.862;
  # and batches of 32 0.878. The same for the other families (theirs is max on the shapes).
  config.classifier.kwargs.pooling = 'avg'
  if 'smoke' not in variants:
    # The folder's size is not known here: decay_steps=0 stretches the cosine decay over the
    # stage's real length (num_epochs epochs of the training split).
    config.classifier.train = synthetic.classifier_train_config(
        learning_rate=3e-3, batch_size=32, num_epochs=40, patience=40, schedule='cosine',
        warmup_steps=100, decay_steps=0)
  # Object masking (wysiwyc/data/augment.py) on half the training images, as the shipped
  # synthetic classifier was trained; the classifier stage skips it, saying so, when the training
  # images have no masks (class-per-subfolder folders, manifests without a mask column).
  config.classifier.train.object_masking = 0.5
  if 'smoke' in variants:
    # Folders of a few dozen images: batches of 8, a few steps a stage.
    for train in (config.classifier.train, config.explainer.distill, config.explainer.train):
      train.batch_size = 8
      train.max_steps = 4
    config.eval.batch_size = 8
  return config
