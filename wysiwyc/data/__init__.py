"""Data sets (TFDS builders) and the input pipeline; see `wysiwyc.data.pipeline`."""
