"""polypssl: self-supervised pretraining, polyp segmentation and cross-dataset generalisation."""

__version__ = "0.1.0"
