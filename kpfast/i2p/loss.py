"""The transformation network's objective: stay classifiable by ψ, move far from x in feature space.

    x' = sigmoid(h_θ(x))
    L  = CE(ψ(N(x')), y) − λ · MSE(F(N(x')), F(N(x)))

ψ (the classifier) and F (the feature extractor) are frozen; only h_θ learns. N is the
normalisation ψ was trained with (ImageNet mean/std in the paper).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..normalize import to_unit_float


def protect(h: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The protected image sigmoid(h(x)) in (0, 1); `x` uint8 or float in [0, 1], never normalised."""
    return torch.sigmoid(h(to_unit_float(x)).float())


def protect_all(h: nn.Module, images: torch.Tensor, device: str | torch.device, batch_size: int = 500) -> torch.Tensor:
    """x' = sigmoid(h(x)) for every image, batch by batch in eval mode, as float32 on the CPU."""
    h.eval()
    with torch.no_grad():
        return torch.cat([protect(h, images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> the uint8 values an 8-bit PNG holds (rounded, not truncated)."""
    return torch.round(x.detach().clamp(0, 1) * 255).to(torch.uint8)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (BN running statistics, no dropout) and no parameter gradients; returns `module`."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class LossTerms(NamedTuple):
    loss: torch.Tensor  # ce − λ·feat, the value minimised
    ce: torch.Tensor  # ψ's cross entropy on x'
    feat: torch.Tensor  # feature distance MSE(F(N(x')), F(N(x)))
    accuracy: torch.Tensor  # ψ's batch accuracy on x'


class TransformLoss(nn.Module):
    """`CE(ψ(N(x')), y) − lam · MSE(F(N(x')), F(N(x)))` with ψ and F frozen (the caller's modules
    are put in eval mode and lose their gradients: they are never trained here)."""

    def __init__(self, classifier: nn.Module, features: nn.Module, normalize: nn.Module, lam: float) -> None:
        super().__init__()
        if lam < 0:
            raise ConfigError(f"lambda must be >= 0 (it weighs a distance to maximise), got {lam}")
        self.classifier = freeze(classifier)
        self.features = freeze(features)
        self.normalize = normalize
        self.lam = lam

    def train(self, mode: bool = True) -> TransformLoss:
        return super().train(False)  # ψ and F stay in eval mode whatever the caller asks

    def forward(self, protected: torch.Tensor, plain: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        """`protected` = x' in (0, 1) with gradients; `plain` = x, uint8 or float in [0, 1]."""
        p, x = self.normalize(protected), self.normalize(plain)
        logits = self.classifier(p).float()
        ce = F.cross_entropy(logits, labels)
        with torch.no_grad():
            target = self.features(x).float()
        feat = F.mse_loss(self.features(p).float(), target)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return LossTerms(ce - self.lam * feat, ce, feat, accuracy)
