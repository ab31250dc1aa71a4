"""``python -m polypssl.data`` (also ``accelerate launch -m polypssl.data``)."""

from polypssl.cli import stage_main

stage_main("data")
