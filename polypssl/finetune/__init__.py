"""Fine-tuning: the study's segmenters, the training loop and predictions.

``build_segmenter(encoder, weights, image_size)`` gives ResNet + DeepLabV3+ or ViT + DPT with
the encoder initialised from any weight spec; ``polypssl finetune`` trains it with the recipe of
docs/protocol.md section 2; ``load_segmenter(run_dir)`` gives the best-validation model of a finished
run back; ``polypssl predict`` writes its masks for any images.
"""

from polypssl.finetune.loop import load_segmenter
from polypssl.finetune.loss import soft_dice_loss
from polypssl.finetune.segmenters import build_segmenter

__all__ = ["build_segmenter", "load_segmenter", "soft_dice_loss"]
