"""qualitune: fine-tune vision-language models into image and video quality scorers."""

__version__ = "0.1.0"
