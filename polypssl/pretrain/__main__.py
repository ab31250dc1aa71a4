"""``python -m polypssl.pretrain`` (also ``accelerate launch -m polypssl.pretrain``)."""

from polypssl.cli import stage_main

stage_main("pretrain")
