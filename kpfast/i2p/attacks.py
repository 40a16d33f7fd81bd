"""Attacks that try to restore plain images from protected ones; each is scored by SSIM/PSNR of
its restorations of the protected test images against the plain test images.

- Inverse transformation network (ITN, paired): the U-Net + sigmoid trained with MSE on
  (protected, plain) pairs. h_θ is key-free and handed to every client, so an attacker can make
  as many pairs as they like: a stronger threat model than ciphertext-only.
- Unpaired GAN: a generator (the U-Net, narrower) maps protected images to natural-looking ones,
  judged by a spectral-norm PatchGAN discriminator against *other* plain images (the two halves
  of the attacker's data are disjoint, so no pair is ever seen). Adam 2e-4, β1 0.5, pure BCE.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..data import DeviceLoader, ImageSet
from ..engine import Amp, Deadline, autocast, fit, resolve_device
from ..engine.distributed import wrap
from ..engine.ranks import Ranks
from ..errors import DataError
from .loss import protect, protect_all, quantize
from .metrics import image_metrics, summary
from .train import train_net
from .unet import UNet

GAN_CHECKPOINT_TYPE = "i2p-gan"


@dataclass
class AttackResult:
    name: str
    restored: torch.Tensor  # uint8 [N, 3, H, W]: the attack's guesses of the plain test images
    per_image: dict[str, torch.Tensor]  # "ssim", "psnr": [N] against the plain test images
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, dict[str, float]]:
        return {k: summary(v) for k, v in self.per_image.items()}


def restore(net: nn.Module, protected: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 restorations sigmoid(net(x')) of uint8 protected images."""
    return quantize(protect_all(net, protected, device))


def paired(protected: ImageSet, plain: ImageSet) -> ImageSet:
    """Pairs as one 6-channel image set, so the loader's flip moves both halves together."""
    if protected.images.shape != plain.images.shape:
        raise DataError("protected and plain sets must hold the same images (same shape and order)")
    return ImageSet(torch.cat([protected.images, plain.images], 1).contiguous(), plain.labels, plain.classes)


def inverse_network_attack(
    protected_train: ImageSet,
    plain_train: ImageSet,
    protected_test: torch.Tensor,
    plain_test: torch.Tensor,
    *,
    epochs: int,
    device: str | torch.device,
    width: float = 1.0,
    batch_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    **kwargs,
) -> tuple[AttackResult, nn.Module]:
    """Train the ITN on (protected, plain) train pairs (joint flip, 10 % validation split, best
    validation MSE kept; `kwargs` go to `train_net`) and restore the protected test images."""
    val, train = paired(protected_train, plain_train).split(val_fraction, seed=seed)

    def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        restored = protect(net, x[:, :3])
        return {"loss": F.mse_loss(restored, x[:, 3:].float() / 255)}

    # padding 0: the crop is the identity, only the (joint) flip remains, as in the paper.
    loader = DeviceLoader(train, batch_size, device=device, shuffle=True, augment=True, seed=seed, padding=0,
                          ranks=Ranks.current())
    net = UNet(width=width)
    fitted = train_net(net, step, loader, DeviceLoader(val, 2 * batch_size, device=device, shuffle=False),
                       epochs=epochs, device=device, seed=seed, desc=kwargs.pop("desc", "ITN attack"), **kwargs)
    restored = restore(net, protected_test, device)
    return AttackResult("ITN", restored, image_metrics(restored, plain_test), fitted.history), net


class PatchDiscriminator(nn.Module):
    """PatchGAN-style critic: three 4x4 convs (stride 2, 2, 1), all spectral-normalised, with
    LeakyReLU; returns one logit per patch (a 3x3 map for 32x32 images)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(in_channels, width, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(2 * width, 1, 4, 1, 0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


class _Pairs:
    """Batches of two loaders side by side, their epochs set together (the GAN's unpaired data)."""

    def __init__(self, first: DeviceLoader, second: DeviceLoader) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return min(len(self.first), len(self.second))

    def set_epoch(self, epoch: int) -> None:
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        return zip(self.first, self.second)


def gan_attack(
    protected_train: ImageSet,
    plain_train: ImageSet,
    protected_test: torch.Tensor,
    plain_test: torch.Tensor,
    *,
    epochs: int,
    device: str | torch.device,
    width: float = 0.25,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    amp: Amp = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 0.0,
    deadline: Deadline = Deadline(),
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[AttackResult, nn.Module]:
    """Unpaired GAN: protected images of the first half of the train set, plain images of the
    second half. Trains `epochs` epochs (the final generator is used: a GAN has no validation
    loss to select on) and restores the protected test images."""
    device = resolve_device(device)
    half = len(protected_train) // 2
    if half < 1:
        raise DataError("the GAN attack needs at least two training images")
    order = torch.randperm(len(protected_train), generator=torch.Generator().manual_seed(seed))
    sources = protected_train.subset(order[:half])
    targets = plain_train.subset(order[half:2 * half])
    ranks = Ranks.current()
    torch.manual_seed(seed)  # the same initial weights on every rank
    gen, disc = UNet(width=width).to(device), PatchDiscriminator().to(device)
    if ranks.distributed:  # each rank its own global RNG stream from here
        torch.manual_seed(ranks.seed(seed))
    gen_trained, disc_trained = wrap(gen, device, ranks), wrap(disc, device, ranks)  # DDP under torchrun
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    pairs = _Pairs(
        DeviceLoader(sources, batch_size, device=device, shuffle=True, augment=True, seed=seed, padding=0, drop_last=True,
                     ranks=ranks),
        DeviceLoader(targets, batch_size, device=device, shuffle=True, augment=True, seed=seed + 1, padding=0,
                     drop_last=True, ranks=ranks))
    if len(pairs) < 1:
        raise DataError(f"the GAN attack needs at least {2 * batch_size} training images for batch size {batch_size}")

    def step(batch) -> dict[str, torch.Tensor]:
        (x_protected, _), (x_plain, _) = batch
        with autocast(device, amp):
            fake = protect(gen_trained, x_protected)
            d_loss = (_bce(disc_trained(x_plain.float() / 255), True) + _bce(disc_trained(fake.detach()), False)) / 2
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with autocast(device, amp):
            g_loss = _bce(disc_trained(fake), True)  # pure adversarial loss: no pairs to compare with
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    fitted = fit(step, pairs, epochs=epochs, kind=GAN_CHECKPOINT_TYPE,
                 state={"generator": gen, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d},
                 run={"settings": {"width": width, "batch_size": batch_size, "lr": lr, "betas": list(betas),
                                   "seed": seed}},
                 checkpoint=checkpoint, resume=True, save_every=checkpoint_every, deadline=deadline,
                 progress=progress, desc="GAN attack", log=log)
    restored = restore(gen, protected_test, device)
    return AttackResult("GAN", restored, image_metrics(restored, plain_test), fitted.history), gen
