"""Flax modules: explainers (U-Net) and the classifier registry."""

from wysiwyc.models import classifiers
from wysiwyc.models.unet import UNet

EXPLAINERS = {'unet': UNet}


def build_explainer(name: str, num_classes: int, **kwargs):
  """Builds the explainer `name` ('unet') producing (B,H,W,num_classes) logits."""
  if name not in EXPLAINERS:
    raise ValueError(f'Unknown explainer {name!r}; choose one of {sorted(EXPLAINERS)}.')
  return EXPLAINERS[name](num_classes=num_classes, **kwargs)
