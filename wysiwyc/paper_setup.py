"""The paper's experiment set-up, shared by configs/voc.py, configs/coco.py and configs/cub.py.

A classifier from the model zoo (VGG-16 or ResNet-50, ImageNet backbone, new head, backbone
frozen) fine-tuned on the data set, then the DeepLabV3-ResNet50 Explainer trained against it,
then the paper's evaluation against ground-truth segmentations (DESIGN.md section 1; values from
the paper and the authors' config files). 224x224 inputs, ImageNet normalization, Adam,
batch 16, early stopping on the validation loss (min delta 0.001).

Weights: `config.weights_dir` (default ~/.cache/wysiwyc/weights) is the `ckpt_dir` of the
classifier and of the explainer's backbone; their files are looked for at
`<weights_dir>/flaxmodels/{vgg16,resnet50}_weights.h5` (see `wysiwyc.models.zoo`).
Data: TFDS under `config.data.data_dir`; archives placed by hand in `config.data.manual_dir`
(default <data_dir>/downloads/manual).
"""

import ml_collections

from wysiwyc import onnx_classifier
from wysiwyc.data import coco
from wysiwyc.data import cub

# Loss weights of the authors' config files (DESIGN.md section 1), per (data set, classifier).
PAPER_LOSSES = {
    ('voc', 'vgg16'): dict(lambda_e=1.0, lambda_tv=1.0, lambda_ac=1.0, lambda_t=0.1,
                           lambda_nt=0.3),
    ('voc', 'resnet50'): dict(lambda_e=3.0, lambda_tv=1.0, lambda_ac=0.8, lambda_t=0.01,
                              lambda_nt=0.3),
    ('coco', 'resnet50'): dict(lambda_e=3.0, lambda_tv=0.05, lambda_ac=0.1, lambda_t=0.01,
                               lambda_nt=0.03),
    ('coco', 'vgg16'): dict(lambda_e=1.0, lambda_tv=0.3, lambda_ac=0.3, lambda_t=0.03,
                            lambda_nt=0.1),
}
# Explainer learning rate and early-stopping patience where the authors' files change them.
PAPER_EXPLAINER_TRAIN = {
    ('voc', 'resnet50'): dict(learning_rate=1e-4),
    ('coco', 'resnet50'): dict(patience=2),
    ('coco', 'vgg16'): dict(patience=2),
}


def train_config(**kwargs) -> ml_collections.ConfigDict:
  """One stage's optimizer and loop settings (the paper's: Adam 1e-5, batch 16, patience 5).
  `num_epochs` is an upper bound; early stopping ends training first."""
  defaults = dict(learning_rate=1e-5, batch_size=16, num_epochs=100, max_steps=0, patience=5,
                  min_delta=0.001, grad_clip=0.0, checkpoint_every_steps=500,
                  grad_accum_steps=1)
  defaults.update(kwargs)
  return ml_collections.ConfigDict(defaults)


def base_config(data_name: str, classifier: str) -> ml_collections.ConfigDict:
  """The full config for data set `data_name` ('voc2007', 'coco2014', 'cub2011') and
  `classifier` ('vgg16', 'resnet50'); loss weights as for VOC with VGG-16."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.log_every_steps = 50
  config.compute_dtype = 'float32'
  config.weights_dir = ml_collections.FieldReference('~/.cache/wysiwyc/weights', field_type=str)

  config.data = ml_collections.ConfigDict()
  config.data.name = data_name
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.image_size = 224
  config.data.flip = False          # the `augment` variant turns flips and colour jitter on
  config.data.color_jitter = 0.0
  config.data.shuffle_buffer = 10_000
  config.data.coco = coco.default_coco_config()
  config.data.cub = cub.default_cub_config()

  config.classifier = ml_collections.ConfigDict()
  config.classifier.checkpoint = ''  # a trained classifier instead of fine-tuning one
  # Or an ONNX file from any framework (docs/pytorch.md): --config.classifier.onnx=model.onnx.
  config.classifier.update(onnx_classifier.config_fields())
  config.classifier.trainable = 'head'  # the backbone stays frozen ('all' trains everything)
  config.classifier.train = train_config()
  set_classifier(config, classifier)

  config.explainer = ml_collections.ConfigDict()
  config.explainer.name = 'deeplabv3_resnet50'
  config.explainer.kwargs = ml_collections.ConfigDict(dict(
      output_stride=8, pretrained='imagenet', ckpt_dir=config.get_ref('weights_dir')))
  config.explainer.train = train_config()

  config.loss = ml_collections.ConfigDict(dict(
      kind='explainer', lambda_c=1.0, min_area=0.05, max_area=0.3,
      **PAPER_LOSSES[('voc', 'vgg16')]))

  config.eval = ml_collections.ConfigDict(dict(batch_size=16, max_examples=0,
                                               num_figure_images=6))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address='', num_processes=-1, process_id=-1,
      cpu_collectives=''))
  return config


def set_classifier(config: ml_collections.ConfigDict, name: str) -> None:
  """The zoo classifier `name` with the paper's head, ImageNet backbone from weights_dir."""
  kwargs = dict(pretrained='imagenet', ckpt_dir=config.get_ref('weights_dir'))
  if name == 'vgg16':
    kwargs.update(head_width=4096, pooled_size=7, dropout=0.5)
  elif name != 'resnet50':
    raise ValueError(f"Unknown zoo classifier {name!r}; choose 'vgg16' or 'resnet50'.")
  config.classifier.name = name
  config.classifier.kwargs = ml_collections.ConfigDict(kwargs)


def use_paper_setting(config: ml_collections.ConfigDict, dataset: str, classifier: str) -> None:
  """Classifier, loss weights and explainer training of the authors' (dataset, classifier)
  config file ('voc' or 'coco'; CUB has none and keeps VOC's)."""
  set_classifier(config, classifier)
  key = (dataset, classifier)
  config.loss.update(PAPER_LOSSES.get(key, PAPER_LOSSES[('voc', 'vgg16')]))
  config.explainer.train.update(PAPER_EXPLAINER_TRAIN.get(key, {}))


def apply_augment(config: ml_collections.ConfigDict) -> None:
  """The authors' optional augmentation, as far as the pipeline has it: horizontal flips and
  colour jitter 0.2 (their small random rotations are not applied)."""
  config.data.flip = True
  config.data.color_jitter = 0.2


def apply_smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny and weight-free, for a first look at a prepared data set (minutes on a CPU): 32x32
  inputs, random-weight backbones, a narrow head, two steps per stage, 64 validation images
  (COCO, CUB), 32 test images."""
  config.smoke = True  # results.md then says that its numbers are not meaningful
  config.log_every_steps = 1
  config.data.image_size = 32
  config.data.shuffle_buffer = 64
  config.data.coco.num_validation = 64
  config.data.cub.num_validation = 64
  config.classifier.kwargs.pretrained = None
  if config.classifier.name == 'vgg16':
    config.classifier.kwargs.update(head_width=32, pooled_size=1)
  else:
    config.classifier.kwargs.width = 8
  config.explainer.kwargs.pretrained = None
  config.explainer.kwargs.width = 8
  config.explainer.kwargs.aspp_features = 16
  for stage in (config.classifier.train, config.explainer.train):
    stage.update(batch_size=4, num_epochs=1, max_steps=2, checkpoint_every_steps=0)
  config.eval.update(batch_size=4, max_examples=32, num_figure_images=2)


def apply_variants(config: ml_collections.ConfigDict, arg: str, variants: dict):
  """Applies the comma-separated variants named in `arg` (e.g. 'resnet50,smoke') in order."""
  for variant in filter(None, arg.split(',')):
    if variant not in variants:
      raise ValueError(f'Unknown config variant {variant!r}; choose from {sorted(variants)}, '
                       "comma-separated (e.g. 'resnet50,smoke').")
    variants[variant](config)
  return config
