"""Data sets (TFDS builders, named in `catalog`) and the input pipeline (`pipeline`)."""
