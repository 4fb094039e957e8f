"""Image files as the models read them: uint8 RGB, upright as their EXIF orientation says (as
viewers show phone photos), transparent pixels on white, 16-bit and float images scaled to 8 bits.
Used by the explain CLI and by folder data sets, so that both read a file the same way."""

import os
from typing import Optional

import numpy as np
from PIL import Image
from PIL import ImageOps

from wysiwyc import errors

# Larger images are refused rather than risking the machine's memory; downscale them first.
MAX_PIXELS = 50_000_000


def read_rgb(path: str, where: Optional[str] = None) -> np.ndarray:
  """The image at `path` as uint8 RGB (H,W,3); a `UserError` naming `where` (e.g. a manifest's
  file and line) and the path when it cannot be read."""
  prefix = path if where is None else f'{where}: {path}'
  if not os.path.exists(path):
    raise errors.UserError(f'{prefix}: no such file.')
  if os.path.isdir(path):
    raise errors.UserError(f'{prefix}: is a folder, not an image.')
  try:
    with Image.open(path) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise errors.UserError(f'{prefix}: {width}x{height} is larger than {MAX_PIXELS:,} '
                               'pixels; downscale it first.')
      return to_rgb_uint8(ImageOps.exif_transpose(image))
  except errors.UserError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise errors.UserError(f'{prefix}: not an image that can be read ({error}).') from None


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
  """Converts any PIL mode (grayscale, palette, RGBA, 16-bit, float) to uint8 RGB."""
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
    if image.mode == 'F' and values.max() <= 1.0:
      top = 1.0
    gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    # Composite transparent pixels onto white, as viewers show them.
    background = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image.convert('RGBA'))
  return np.asarray(image.convert('RGB'), dtype=np.uint8)
