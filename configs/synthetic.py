r"""The Explainer on the synthetic shapes data set (objects and backgrounds known).

Main job (every stage: data, classifier, explainer, evaluation, figures):

  python -m wysiwyc.main --config=configs/synthetic.py --workdir=workdirs/synthetic

Expected (test split, `python experiments/seeds.py --config=configs/synthetic.py --seeds=0,1,2`,
mean +- std over the 3 seeds): classifier (shipped) per-class accuracy 0.971; Explainer merged
iou@0.5 0.781 +- 0.002, per-class iou@0.5 0.776 +- 0.005, mean_f1 0.846 +- 0.001, class
specificity other/own 0.075 +- 0.010. 14-15 minutes per run on the 2-core development machine
while it was shared with other jobs.

Tiny run for tests and a first look (under a minute on 2 CPU cores):

  python -m wysiwyc.main --config=configs/synthetic.py:smoke --workdir=/tmp/smoke

Another family of classifier, trained from scratch with the zoo entries' recipe (`resnet` or
`mixer`, CLASSIFIER_FAMILIES below; they compose with `smoke` in any order):

  python experiments/train_zoo_classifier.py --config=configs/synthetic.py:scratch,resnet \
      --workdir=/tmp/cls_resnet --output_dir=/tmp/cls_resnet

Override any field on the command line, e.g. `--config.explainer.train.num_epochs=3`.
"""

import functools

import ml_collections

from wysiwyc import onnx_classifier
from wysiwyc.data import synthetic


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants (see `VARIANTS`)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.log_every_steps = 20
  # 'bfloat16': convolutions and matmuls in bfloat16, parameters and losses in float32 (GPU/TPU).
  config.compute_dtype = 'float32'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.image_size = 64
  config.data.flip = True
  config.data.color_jitter = 0.0
  config.data.random_shift = 0  # pixels: random shifts of image and masks when training
  config.data.shuffle_buffer = 10_000
  config.data.synthetic = synthetic.default_synthetic_config()

  config.classifier = ml_collections.ConfigDict()
  config.classifier.name = 'simple_cnn'
  # The classifier to explain: a shipped zoo entry ('zoo:NAME', wysiwyc/models/weights/), a
  # wysiwyc workdir or an orbax folder; '' trains one from scratch (the `scratch` variant).
  # The shipped one was trained by experiments/train_zoo_classifier.py for ~15 CPU-minutes, which
  # leaves the main job's whole budget to the Explainer (a real user has a trained classifier).
  config.classifier.checkpoint = 'zoo:synthetic_shapes_cnn'
  # stem_stride=2 (2x2 space-to-depth first) makes it ~3.5x cheaper (121 -> 427 images/s per
  # training step here), and every Explainer step runs it on 2 x batch images. Global max
  # pooling asks "is there a star anywhere"; it was not measured to beat average pooling.
  config.classifier.kwargs = ml_collections.ConfigDict(
      {'width': 16, 'depth': 4, 'norm': 'batch', 'dropout': 0.0, 'stem_stride': 2,
       'pooling': 'max'})
  config.classifier.train = classifier_train_config(num_epochs=2, patience=2)
  # Or a classifier from any framework as an ONNX file (docs/pytorch.md):
  # --config.classifier.onnx=model.onnx, with its input convention (onnx_layout,
  # onnx_normalization, onnx_outputs; configs/folder.py says what each takes).
  config.classifier.update(onnx_classifier.config_fields())

  config.explainer = ml_collections.ConfigDict()
  config.explainer.name = 'unet'
  # input_stride=2: the U-Net runs at 32x32 (DeepLab, the paper's explainer, works at 1/8): 3.8x
  # cheaper per step than full resolution. upsample='guided': its logits are brought to 64x64 by
  # a fast guided filter with the image as guide (windows of 17 px, guide_radius=8), not
  # bilinearly, so the mask edges follow the image's edges instead of the 32x32 grid. Batch
  # norm: the shipped starting weights have it (and on CPU it runs ~1.5x faster than group
  # norm).
  config.explainer.kwargs = ml_collections.ConfigDict(
      {'width': 16, 'depth': 3, 'norm': 'batch', 'input_stride': 2, 'upsample': 'guided',
       'guide_radius': 8, 'guide_eps': 0.05})
  # The weights the training starts from: a shipped zoo entry ('zoo:NAME'), a workdir (its
  # explainer/best) or an orbax folder, for the same explainer.name and kwargs; '' = random.
  # The authors' explainer starts from an ImageNet-classification backbone; the analog here is
  # a U-Net trained to classify the shapes from their labels alone (the self-explaining
  # classifier, experiments/train_zoo_explainer.py). From random weights every class channel
  # learns the same objectness map (class specificity other/own 0.94; docs/synthetic.md).
  config.explainer.init_from = 'zoo:synthetic_shapes_unet'
  # The black-box start (explainer.init_from='distill', the `blackbox` variant): before the
  # Explainer, a SimpleCNN with the shapes of its encoder learns the classifier's soft predictions
  # on the training images (only calls of the classifier), and its convolutions become the
  # encoder. Its optimizer and step budget; `pooling` is the student's global pooling: with the
  # average it learns from the first epoch (against the shipped classifier, validation loss 0.33
  # after 4 epochs vs 0.56 with the max) and the Explainer's masks come out as good or better
  # (docs/any_classifier.md).
  config.explainer.distill = train_config(learning_rate=3e-3, batch_size=64, num_epochs=1000,
                                          max_steps=1500, patience=1000, schedule='cosine',
                                          warmup_steps=100, decay_steps=0)
  config.explainer.distill.pooling = 'avg'
  # The paper's Adam lr of 1e-5 is for 10k+ VOC steps from a large network; from scratch on a
  # small one, 1e-3 with cosine decay over the step budget converges within it. 750 steps: with
  # the guided upsampling the masks are best by then (validation iou@0.5 peaks at ~750 of 1500
  # steps, after which the masks outgrow the objects; test split, seed 0: merged iou@0.5 0.782 at
  # 750 steps vs 0.771 at 1500), and the main job takes about half as long.
  config.explainer.train = train_config(learning_rate=1e-3, batch_size=32, num_epochs=50,
                                        max_steps=750, patience=5, min_delta=0.001,
                                        schedule='cosine', warmup_steps=100, decay_steps=750)

  # Loss weights of the paper's VOC setting (DESIGN.md section 1) but lambda_t; 0 switches a term
  # off. The authors tune the area weights per data set (COCO: lambda_t 0.01). Here the entropy
  # term is lowest for masks ~2 px wider than the objects (experiments/silhouette_leak.py), and
  # lambda_t=1 pulls the masks in to the objects: with the shipped start, bilinear upsampling and
  # 1500 steps, test split, merged iou@0.5 0.605 vs 0.516 at the paper's 0.1 (class specificity
  # 0.057 vs 0.055).
  config.loss = ml_collections.ConfigDict()
  config.loss.kind = 'explainer'  # or 'real_time_saliency'
  config.loss.lambda_c = 1.0
  config.loss.lambda_e = 1.0
  config.loss.lambda_tv = 1.0
  config.loss.lambda_ac = 1.0
  config.loss.lambda_t = 1.0
  config.loss.lambda_nt = 0.3
  config.loss.min_area = 0.05
  config.loss.max_area = 0.3
  # NOT in the paper (0 = off): classify the image kept by one target class's own mask against
  # that class alone (losses.explainer_loss), an ablation aimed at class specificity.
  config.loss.lambda_single = 0.0
  # NOT in the paper (0 = off): penalize pixels claimed by several target classes' masks
  # (losses.class_overlap_loss), an ablation aimed at class specificity.
  config.loss.lambda_overlap = 0.0
  # NOT in the paper (0 = off): each class channel's log-mean-exp pooling (sharpness
  # pooled_sharpness) classifies the labels (losses.pooled_class_loss), the self-explainer's signal.
  config.loss.lambda_pooled = 0.0
  config.loss.pooled_sharpness = 1.0
  # NOT in the paper (False = off): the classifier sees the images masked by the masks thresholded
  # at 0.5, with a straight-through gradient (losses.explainer_loss), so that a classifier which
  # normalizes each image cannot read a faint mask's image as the whole image.
  config.loss.binary_masks = False
  # NOT in the paper ('zeros' = the paper's): what fills the removed pixels of the kept and dropped
  # images; 'blur': the image blurred by a Gaussian of fill_blur_sigma times its side; 'auto':
  # 'blur' for a classifier that normalizes each image, else 'zeros' (stages.auto_fill).
  config.loss.fill = 'zeros'
  config.loss.fill_blur_sigma = 0.125

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.max_examples = 0  # 0 = the whole test split
  config.eval.num_figure_images = 6

  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ''
  config.distributed.num_processes = -1
  config.distributed.process_id = -1
  config.distributed.cpu_collectives = ''

  variants = list(filter(None, arg.split(',')))
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(f'Unknown config variant {variant!r}; choose from {sorted(VARIANTS)}, '
                       "comma-separated (e.g. 'smoke,rts').")
  # The classifier families go last, whatever their place in `arg`: they replace the classifier
  # that the other variants set up, and shrink it when `smoke` is among them.
  for variant in sorted(variants, key=lambda variant: variant in CLASSIFIER_FAMILIES):
    VARIANTS[variant](config)
  return config


def train_config(**kwargs) -> ml_collections.ConfigDict:
  """Optimizer and loop settings of one stage; early stopping on validation loss."""
  # grad_accum_steps: the batch is processed in that many equal slices per optimizer step
  # (same update as one pass over the whole batch, less memory).
  defaults = dict(learning_rate=1e-3, batch_size=32, num_epochs=10, max_steps=0, patience=5,
                  min_delta=0.001, grad_clip=0.0, checkpoint_every_steps=0, grad_accum_steps=1,
                  schedule='constant', warmup_steps=0, decay_steps=0)
  defaults.update(kwargs)
  return ml_collections.ConfigDict(defaults)


def classifier_train_config(**kwargs) -> ml_collections.ConfigDict:
  """`train_config` plus the classifier's augmentation."""
  # object_masking: fraction of training images masked with their objects' masks
  # (wysiwyc/data/augment.py), so that the classifier reads a masked-out region as "nothing
  # there"; 0 = off. masking_margin: the masks grow by a random 0..margin pixels.
  defaults = dict(learning_rate=1e-3, batch_size=64, min_delta=0.001, object_masking=0.0,
                  masking_margin=3)
  defaults.update(kwargs)
  return train_config(**defaults)


def apply_smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks everything so that every stage runs in well under a minute."""
  config.smoke = True  # results.md then says that its numbers are not meaningful
  config.log_every_steps = 2
  config.classifier.checkpoint = ''  # the shipped classifier is for 64 px and width 16
  config.data.image_size = 32
  config.data.shuffle_buffer = 256
  config.data.synthetic.image_size = 32
  config.data.synthetic.num_train = 64
  config.data.synthetic.num_validation = 16
  config.data.synthetic.num_test = 16
  config.classifier.kwargs.width = 8
  config.classifier.kwargs.depth = 2
  config.classifier.train.batch_size = 16
  config.classifier.train.num_epochs = 2
  config.explainer.kwargs.width = 8
  config.explainer.kwargs.depth = 2
  config.explainer.init_from = ''  # the shipped starting weights are for width 16, depth 3
  config.explainer.train.batch_size = 16
  config.explainer.train.num_epochs = 2
  config.explainer.train.schedule = 'constant'
  config.explainer.distill.batch_size = 16
  config.explainer.distill.max_steps = 4
  config.eval.batch_size = 16
  config.eval.num_figure_images = 3


def apply_real_time_saliency(config: ml_collections.ConfigDict) -> None:
  """The Real-Time Saliency baseline: the same explainer and trainer, its loss (DESIGN.md)."""
  config.loss = ml_collections.ConfigDict(dict(
      kind='real_time_saliency', lambda_tv=10.0, lambda_area=1.0, lambda_preserve=1.0,
      lambda_destroy=5.0, destroyer_power=0.3))


def apply_scratch(config: ml_collections.ConfigDict) -> None:
  """Trains the classifier from scratch instead of loading the shipped zoo entry, with the
  recipe of the zoo entry (30k training images, 10 epochs, cosine decay: ~15 CPU-minutes)."""
  config.classifier.checkpoint = ''
  config.data.synthetic.num_train = 30_000
  config.classifier.train = classifier_train_config(num_epochs=10, patience=10,
                                                    schedule='cosine', warmup_steps=200,
                                                    decay_steps=4690, object_masking=0.5)


def apply_classifier_start(config: ml_collections.ConfigDict) -> None:
  """The Explainer without the shipped start: its encoder starts from the classifier's
  convolutions, its decoder from random weights, and the single-class term (weight 0.3) beside
  the paper's loss pulls the class channels apart (configs/folder.py's recipe; over 3 seeds in
  docs/synthetic.md, Ablations)."""
  config.explainer.init_from = 'classifier'
  config.loss.lambda_single = 0.3


def apply_blackbox(config: ml_collections.ConfigDict) -> None:
  """The Explainer of any classifier: the black-box start (a student distilled from the
  classifier's predictions gives the encoder) with the single-class term (weight 0.3) beside the
  paper's loss (docs/any_classifier.md)."""
  config.explainer.init_from = 'distill'
  config.loss.lambda_single = 0.3
  # The blurred image fills what a mask removes when the classifier normalizes each image (it
  # answers an image scaled by 0.05 as the image), else the paper's zeros (stages.auto_fill).
  config.loss.fill = 'auto'
  # Twice the default's budget (the configs/folder.py one), the cosine decay over all of it: from
  # the distilled encoder, against the shipped classifier, seed 0: per-class iou@0.5 0.743 and
  # other/own 0.103 after 1500 steps, 0.719 and 0.128 after 750.
  config.explainer.train.max_steps = 1500
  config.explainer.train.decay_steps = 0


def apply_natural(config: ml_collections.ConfigDict) -> None:
  """The harder benchmark: the same shapes and classes, drawn so that colour alone does not
  outline them: textured objects with soft edges over full-contrast backgrounds, pixel noise,
  and more occlusion. Its own data set (the parameters name it) and classifier."""
  synthetic_config = config.data.synthetic
  synthetic_config.object_texture = 0.6
  synthetic_config.edge_blur = 1.0
  synthetic_config.texture_strength = 0.8
  synthetic_config.noise_std = 0.03
  synthetic_config.min_visible_fraction = 0.6
  if config.classifier.checkpoint:  # `scratch` trains it, `smoke` trains a tiny one
    config.classifier.checkpoint = 'zoo:synthetic_natural_cnn'


def apply_shortcut(config: ml_collections.ConfigDict) -> None:
  """A planted shortcut (experiments/shortcut.py): the first two classes each come with a
  fixed-colour square away from the objects in every image that shows them, never otherwise.
  Its classifier is shipped (`zoo:synthetic_shortcut_cnn`); `classifier.checkpoint=''` trains
  it here with the recipe below, which the control shares."""
  synthetic_config = config.data.synthetic
  synthetic_config.cue_classes = 2
  synthetic_config.cue_size = 0.1
  synthetic_config.cue_rate_present = 1.0
  synthetic_config.cue_rate_absent = 0.0
  config.classifier.checkpoint = 'zoo:synthetic_shortcut_cnn'
  # The `scratch` recipe (the shipped entries: 30,000 training images) without object masking,
  # which would teach that a cue whose objects were dropped means nothing. decay_steps=0: the
  # cosine decay spans the stage, whatever the number of training images.
  config.classifier.train = classifier_train_config(num_epochs=10, patience=10,
                                                    schedule='cosine', warmup_steps=200,
                                                    decay_steps=0)


def apply_shortcut_control(config: ml_collections.ConfigDict) -> None:
  """The shortcut's control: the same cues and recipe, each cue drawn in half the images
  whatever their classes, so that it says nothing about the label
  (`zoo:synthetic_shortcut_control_cnn`)."""
  apply_shortcut(config)
  config.data.synthetic.cue_rate_present = 0.5
  config.data.synthetic.cue_rate_absent = 0.5
  config.classifier.checkpoint = 'zoo:synthetic_shortcut_control_cnn'


# Classifiers of other families than the SimpleCNN (wysiwyc/models/classifiers.py), each with
# the defaults of its variant. CPU seconds per classifier training step at batch 64, 64 px, on the
# shared 2-core machine (experiments/bench_steps.py): simple_cnn 0.13, resnet 0.27; per Explainer
# step (batch 32) with each of them: 0.31, 0.44. The mixer, from its runs alone on the 2 cores
# (docs/any_classifier.md): 0.50 per classifier step, 0.64 per Explainer step.
CLASSIFIER_FAMILIES = {
    # 3 stages of 2 basic blocks each, widths 16/32/64 at 32/16/8 px (after a space-to-depth
    # stem), global max pooling. Validation per-class accuracy after 2 of the `scratch` recipe's
    # 10 epochs: 0.721 with one block a stage and global average pooling, 0.775 with max pooling,
    # 0.791 with the second norms' scales starting at one (not zero), 0.833 with 2 blocks a stage
    # (the SimpleCNN: 0.816). 2 blocks a stage cost twice one.
    'resnet': {'width': 16, 'depth': 3, 'blocks': 2, 'downsample': 'avg', 'pooling': 'max'},
    # 4x4 patches (256 tokens at 64 px), each token embedding its 12x12 window (overlap 1), 4
    # blocks 64 wide mixing the tokens by spatial shifts (S2-MLP), batch norm, global max pooling.
    # Validation per-class accuracy after 2 `scratch` epochs: 0.808 (the SimpleCNN 0.816); with the
    # Mixer's token MLP across all patches instead of shifts: 0.758 with 8x8 patches (after all 10
    # epochs 0.823, 21 min), 0.729 with 4x4; a relative-position ViT of the same size 0.761.
    'mixer': {'width': 64, 'depth': 4, 'patch': 4, 'token_mlp_ratio': 1.0, 'mlp_ratio': 4.0,
              'pooling': 'max', 'overlap': 1, 'norm': 'batch', 'token_mixing': 'shift'},
}
# The share of a recipe's epochs (`scratch`: 10) that each family trains: about the SimpleCNN's
# time for a family whose steps cost more.
CLASSIFIER_EPOCH_SHARE = {'resnet': 0.6, 'mixer': 1.0}


def apply_classifier_family(config: ml_collections.ConfigDict, name: str) -> None:
  """The classifier `name` of `CLASSIFIER_FAMILIES` with its defaults (8 wide, 2 deep with
  `smoke`), trained from scratch: the shipped zoo entries are SimpleCNNs. Add `scratch` for the
  zoo entries' recipe, or give a trained one with --config.classifier.checkpoint=WORKDIR."""
  config.classifier.name = name
  config.classifier.kwargs = ml_collections.ConfigDict(dict(CLASSIFIER_FAMILIES[name]))
  if config.get('smoke', False):
    config.classifier.kwargs.width = 8
    config.classifier.kwargs.depth = 2
  share = CLASSIFIER_EPOCH_SHARE[name]
  if share != 1:
    train = config.classifier.train
    train.num_epochs = max(1, round(train.num_epochs * share))
    train.patience = max(1, round(train.patience * share))
    if train.decay_steps:  # a fixed cosine length shrinks with the epochs
      train.decay_steps = max(train.warmup_steps + 1, round(train.decay_steps * share))
  config.classifier.checkpoint = ''
  # Not 'classifier' (that copies a SimpleCNN's convolutions into the U-Net's encoder) nor the
  # shipped start (pretrained on the shapes): the black-box start, which only calls the classifier.
  apply_blackbox(config)


VARIANTS = {'smoke': apply_smoke, 'rts': apply_real_time_saliency, 'scratch': apply_scratch,
            'classifier_start': apply_classifier_start, 'blackbox': apply_blackbox,
            'natural': apply_natural,
            'shortcut': apply_shortcut, 'shortcut_control': apply_shortcut_control,
            'resnet': functools.partial(apply_classifier_family, name='resnet'),
            'mixer': functools.partial(apply_classifier_family, name='mixer')}
