"""Flax modules: explainers (U-Net, DeepLabV3-ResNet50) and the classifier registry (with the
ImageNet zoo classifiers 'vgg16' and 'resnet50').

Modules with pretrained weights (`zoo`, `deeplab`) load them outside `init`, so that building
and restoring a trained model never needs the weights file: `missing_pretrained(module)` says
whether the file can be had, `load_pretrained(module, variables)` puts it in fresh variables.
"""

from typing import Any, Dict, Optional

import flax.linen as nn

from wysiwyc.models import classifiers
from wysiwyc.models import zoo  # registers the classifiers 'vgg16' and 'resnet50'
from wysiwyc.models.deeplab import DeepLabV3
from wysiwyc.models.unet import UNet

EXPLAINERS = {'unet': UNet, 'deeplabv3_resnet50': DeepLabV3}


def build_explainer(name: str, num_classes: int, **kwargs):
  """Builds the explainer `name` ('unet', 'deeplabv3_resnet50') producing (B,H,W,num_classes)
  logits at input resolution."""
  if name not in EXPLAINERS:
    raise ValueError(f'Unknown explainer {name!r}; choose one of {sorted(EXPLAINERS)}.')
  return EXPLAINERS[name](num_classes=num_classes, **kwargs)


def missing_pretrained(module: nn.Module) -> Optional[str]:
  """What is missing to load `module`'s pretrained weights (None: nothing, or no pretraining)."""
  check = getattr(module, 'missing_pretrained', None)
  return check() if check is not None else None


def load_pretrained(module: nn.Module, variables: Dict[str, Any]) -> Dict[str, Any]:
  """`variables` ({'params', 'batch_stats'}) with `module`'s pretrained weights put in; the
  same variables for modules without pretrained weights."""
  load = getattr(module, 'load_pretrained', None)
  return load(variables) if load is not None else variables
