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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..data import DeviceLoader, ImageSet
from .loss import protect, quantize
from .metrics import image_metrics, summary
from .train import Deadline, FitResult, TimeLimitReached, fit
from .unet import UNet


@dataclass
class AttackResult:
    name: str
    restored: torch.Tensor  # uint8 [N, 3, H, W]: the attack's guesses of the plain test images
    per_image: dict[str, torch.Tensor]  # "ssim", "psnr": [N] against the plain test images
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, dict[str, float]]:
        return {k: summary(v) for k, v in self.per_image.items()}


def restore(net: nn.Module, protected: torch.Tensor, device: str | torch.device, batch_size: int = 500) -> torch.Tensor:
    """uint8 restorations sigmoid(net(x')) of uint8 protected images, batch by batch."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(protected), batch_size):
            out.append(quantize(protect(net, protected[i:i + batch_size].to(device))).cpu())
    return torch.cat(out)


def paired(protected: ImageSet, plain: ImageSet) -> ImageSet:
    """Pairs as one 6-channel image set, so the loader's flip moves both halves together."""
    if protected.images.shape != plain.images.shape:
        raise ValueError("protected and plain sets must hold the same images (same shape and order)")
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
    validation MSE kept; `kwargs` go to `fit`) and restore the protected test images."""
    val, train = paired(protected_train, plain_train).split(val_fraction, seed=seed)

    def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        restored = protect(net, x[:, :3])
        return {"loss": F.mse_loss(restored, x[:, 3:].float() / 255)}

    # padding 0: the crop is the identity, only the (joint) flip remains, as in the paper.
    loader = DeviceLoader(train, batch_size, device=device, shuffle=True, augment=True, seed=seed, padding=0)
    net = UNet(width=width)
    fitted: FitResult = fit(net, step, loader, DeviceLoader(val, 2 * batch_size, device=device, shuffle=False),
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
    amp: bool | Literal["auto"] = "auto",
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
    device = torch.device(device)
    half = len(protected_train) // 2
    if half < 1:
        raise ValueError("the GAN attack needs at least two training images")
    order = torch.randperm(len(protected_train), generator=torch.Generator().manual_seed(seed))
    sources = protected_train.subset(order[:half])
    targets = plain_train.subset(order[half:2 * half])
    torch.manual_seed(seed)
    gen, disc = UNet(width=width).to(device), PatchDiscriminator().to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    use_amp = device.type == "cuda" if amp == "auto" else bool(amp)
    src = DeviceLoader(sources, batch_size, device=device, shuffle=True, augment=True, seed=seed, padding=0, drop_last=True)
    tgt = DeviceLoader(targets, batch_size, device=device, shuffle=True, augment=True, seed=seed + 1, padding=0, drop_last=True)
    if len(src) < 1:
        raise ValueError(f"the GAN attack needs at least {2 * batch_size} training images for batch size {batch_size}")
    history: list[dict[str, float]] = []
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["epochs"] != epochs:
            raise ValueError(f"cannot resume {path}: made for {state['epochs']} epochs, not {epochs}")
        for module, key in ((gen, "gen"), (disc, "disc"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        history = list(state["history"])
        torch.set_rng_state(state["rng"])
    def save() -> None:
        state = {"epochs": epochs, "gen": gen.state_dict(), "disc": disc.state_dict(), "opt_g": opt_g.state_dict(),
                 "opt_d": opt_d.state_dict(), "history": history, "rng": torch.get_rng_state()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(state, f))

    start, last, saved_at = len(history), 0.0, time.monotonic()
    for epoch in range(start, epochs):
        try:
            deadline.check(last, f"GAN attack epoch {epoch + 1}")
        except TimeLimitReached:
            if path is not None and epoch > start:  # keep this call's progress
                save()
            raise
        began = time.perf_counter()
        gen.train()
        disc.train()
        src.set_epoch(epoch)
        tgt.set_epoch(epoch)
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        bar = tqdm(zip(src, tgt), total=len(src), desc=f"GAN attack {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for (x_protected, _), (x_plain, _) in bar:
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                fake = protect(gen, x_protected)
                d_loss = (_bce(disc(x_plain.float() / 255), True) + _bce(disc(fake.detach()), False)) / 2
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                g_loss = _bce(disc(fake), True)  # pure adversarial loss: no pairs to compare with
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            sums += torch.stack([d_loss.detach(), g_loss.detach()]).double()
        bar.close()
        last = time.perf_counter() - began
        d, g = (sums / len(src)).tolist()
        history.append({"d_loss": d, "g_loss": g, "seconds": last})
        if path is not None and (epoch + 1 == epochs or time.monotonic() - saved_at >= checkpoint_every):
            save()
            saved_at = time.monotonic()
        log(f"GAN attack {epoch + 1}/{epochs}  d_loss {d:.4f}  g_loss {g:.4f}  {last:.1f}s")
    restored = restore(gen, protected_test, device)
    return AttackResult("GAN", restored, image_metrics(restored, plain_test), history), gen
