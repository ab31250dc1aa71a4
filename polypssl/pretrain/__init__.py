"""Self-supervised pretraining: MoCo v3, Barlow Twins and MAE (``polypssl pretrain``).

Every method is an ``nn.Module`` built as ``Method(encoder, image_size, cfg, weights)`` whose
``forward(batch)`` (alias ``training_loss``) returns the scalar loss, ``after_optimizer_step(progress)``
does per-step updates (MoCo v3's momentum encoder) and ``backbone`` is the encoder to export
(torchvision / timm key names). ``views.build_views`` gives each method's augmentation and
``optim`` its optimiser and schedule; ``loop`` runs them under Accelerate.
"""

from polypssl.pretrain.barlowtwins import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss
from polypssl.pretrain.mae import MAE, MAEConfig, mae_loss
from polypssl.pretrain.mocov3 import MoCoV3, MoCoV3Config, mocov3_loss, momentum_at
from polypssl.pretrain.optim import build_optimizer, build_scheduler
from polypssl.pretrain.views import build_views

#: method name -> (module class, config class), as used by configs (``method: mocov3``).
METHODS = {
    "mocov3": (MoCoV3, MoCoV3Config),
    "barlowtwins": (BarlowTwins, BarlowTwinsConfig),
    "mae": (MAE, MAEConfig),
}

__all__ = [
    "METHODS",
    "MAE",
    "BarlowTwins",
    "BarlowTwinsConfig",
    "MAEConfig",
    "MoCoV3",
    "MoCoV3Config",
    "barlow_twins_loss",
    "build_optimizer",
    "build_scheduler",
    "build_views",
    "mae_loss",
    "mocov3_loss",
    "momentum_at",
]
