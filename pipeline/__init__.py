"""vision-batch: caption every image in a folder or volume with a vision model, into Delta."""

__version__ = "0.1.0"
