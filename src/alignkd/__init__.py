"""alignkd: distil a large vision-language model into a small one with Align-KD."""

__version__ = "0.1.0"
