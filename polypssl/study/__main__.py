"""``python -m polypssl.study`` (also ``accelerate launch -m polypssl.study``)."""

from polypssl.cli import stage_main

stage_main("study")
