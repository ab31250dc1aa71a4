"""``python -m polypssl.evaluate`` (also ``accelerate launch -m polypssl.evaluate``)."""

from polypssl.cli import stage_main

stage_main("evaluate")
