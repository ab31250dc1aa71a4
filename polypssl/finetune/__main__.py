"""``python -m polypssl.finetune`` (also ``accelerate launch -m polypssl.finetune``)."""

from polypssl.cli import stage_main

stage_main("finetune")
