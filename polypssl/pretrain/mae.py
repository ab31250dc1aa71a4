"""Masked autoencoder (He et al., 2022) for ViT encoders, on lightly's TIMM modules.

The encoder sees a random 25% of the patches; a light decoder reconstructs the masked ones, and
the loss is the mean squared error on masked patches against per-patch normalised pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import Tensor, nn

from polypssl.pretrain.mocov3 import _create_backbone


@dataclass
class MAEConfig:
    """MAE hyper-parameters (official ViT-B/16 values)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    official_init: bool = True  # random weights: MAE's xavier initialisation (lightly's)


def mae_loss(pred: Tensor, target: Tensor, norm_pix_loss: bool = True) -> Tensor:
    """Mean squared error over the given (masked) patches ``[B, M, P*P*3]``.

    With ``norm_pix_loss`` the target patches are normalised by their own mean and (unbiased,
    as in the release) variance.
    """
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return F.mse_loss(pred.float(), target)


class MAE(nn.Module):
    """MAE; ``backbone`` is the timm ViT to export, ``forward(images)`` returns the loss."""

    def __init__(self, encoder: str, image_size: int, cfg: MAEConfig | None = None, weights: str = "random") -> None:
        super().__init__()
        cfg = cfg or MAEConfig()
        self.cfg = cfg
        vit = _create_backbone(encoder, weights, image_size, sincos_pos_embed=True)
        if not hasattr(vit, "patch_embed"):
            raise ValueError(f"MAE needs a ViT encoder, got {encoder!r}")
        fresh = weights == "random" and cfg.official_init
        # lightly re-initialises weights and the position embedding unless told to skip: only
        # random encoders get MAE's (xavier) initialisation; loaded weights are kept, and so is
        # the fixed sin-cos position embedding create_backbone filled in.
        self.encoder = MaskedVisionTransformerTIMM(
            vit, weight_initialization="" if fresh else "skip", pos_embed_initialization="skip"
        )
        vit.pos_embed.requires_grad_(False)  # MAE's position embedding is fixed sin-cos
        # The encoder's own mask token is unused by MAE (the decoder masks); frozen so that it
        # neither reaches the optimiser nor trips DDP's unused-parameter check.
        self.encoder.mask_token.requires_grad_(False)
        self.patch_size = vit.patch_embed.patch_size[0]
        num_patches = vit.patch_embed.num_patches
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=num_patches,
            embed_dim=cfg.decoder_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            num_prefix_tokens=vit.num_prefix_tokens,
        )
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch_size**2 * 3)
        for layer in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def backbone(self) -> nn.Module:
        # A property rather than a second registration of the ViT, so the state dict holds
        # each tensor once (shared tensors break safetensors checkpoints).
        return self.encoder.vit

    def reconstruct(self, images: Tensor) -> dict[str, Tensor]:
        """Masks, encodes and decodes; returns predictions and targets of the masked patches.

        Keys: ``pred`` and ``target`` ``[B, M, P*P*3]`` (target unnormalised), ``idx_keep`` and
        ``idx_mask`` (token indices, 0 is the class token, which is never masked).
        """
        b = images.shape[0]
        seq_len = self.encoder.sequence_length
        idx_keep, idx_mask = utils.random_token_mask(
            size=(b, seq_len), mask_ratio=self.cfg.mask_ratio, device=images.device
        )
        tokens = self.encoder.encode(images, idx_keep=idx_keep)
        tokens = self.decoder_embed(tokens)
        full = utils.repeat_token(self.decoder.mask_token, (b, seq_len))
        full = utils.set_at_index(full, idx_keep, tokens.type_as(full))
        decoded = self.decoder(full)
        pred = self.decoder_pred(utils.get_at_index(decoded, idx_mask))
        patches = utils.patchify(images, self.patch_size)
        prefix = self.encoder.vit.num_prefix_tokens
        target = utils.get_at_index(patches, idx_mask - prefix)
        return {"pred": pred, "target": target, "idx_keep": idx_keep, "idx_mask": idx_mask}

    def training_loss(self, batch: Any) -> Tensor:
        """``batch`` = one tensor of images ``[B, 3, S, S]`` (a one-element list/tuple is accepted)."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self.reconstruct(images)
        return mae_loss(out["pred"], out["target"], self.cfg.norm_pix_loss)

    def forward(self, batch: Any) -> Tensor:
        return self.training_loss(batch)

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to update (kept for a uniform method interface)."""

