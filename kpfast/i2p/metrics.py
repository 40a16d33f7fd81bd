"""Image-quality metrics between protected or restored images and the plain ones.

SSIM and PSNR come from torchmetrics (the ``kpfast[i2p]`` extra) (`structural_similarity_index_measure`,
`peak_signal_noise_ratio`), one value per image, on [0, 1] images (data_range 1.0). SSIM uses a
7x7 uniform window: scikit-image's default, which the authors' lab used for its box plots
(torchmetrics' own default is an 11x11 Gaussian; on 32x32 images the two differ slightly).
"""
from __future__ import annotations

import statistics

import torch

from ..errors import DataError
from ..extras import require
from ..normalize import to_unit_float

_image = require("torchmetrics.functional.image")
peak_signal_noise_ratio = _image.peak_signal_noise_ratio
structural_similarity_index_measure = _image.structural_similarity_index_measure

SSIM_WINDOW = 7
_CHUNK = 1000  # images per call: bounds the memory of SSIM's intermediate maps


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [N] of uint8 or [0, 1] float images against `reference`."""
    return _per_image(images, reference, lambda a, b: structural_similarity_index_measure(
        a, b, gaussian_kernel=False, kernel_size=SSIM_WINDOW, data_range=1.0, reduction="none"))


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [N] in dB (inf for identical images)."""
    return _per_image(images, reference, lambda a, b: peak_signal_noise_ratio(
        a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)))


def _per_image(images: torch.Tensor, reference: torch.Tensor, fn) -> torch.Tensor:
    if images.shape != reference.shape or images.dim() != 4:
        raise DataError(f"expected two image batches [N, C, H, W] of one shape, got "
                         f"{tuple(images.shape)} and {tuple(reference.shape)}")
    out = [fn(to_unit_float(images[i:i + _CHUNK]).double(), to_unit_float(reference[i:i + _CHUNK]).double())
           for i in range(0, len(images), _CHUNK)]
    return torch.cat(out).float().cpu() if out else torch.empty(0)


def blur3(images: torch.Tensor) -> torch.Tensor:
    """A mild 3x3 box blur (reflect padding) of uint8 or [0, 1] images, as floats in [0, 1]:
    the reference for how much SSIM a barely damaged image keeps."""
    x = to_unit_float(images)
    c = x.shape[1]
    kernel = torch.full((c, 1, 3, 3), 1 / 9, dtype=x.dtype, device=x.device)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)


def summary(values: torch.Tensor) -> dict[str, float]:
    """Mean and median of per-image values."""
    v = values.double().flatten().tolist()
    if not v:
        raise DataError("no values to summarise")
    return {"mean": statistics.fmean(v), "median": statistics.median(v)}


def image_metrics(images: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"ssim": [N], "psnr": [N]} of `images` against `reference`."""
    return {"ssim": ssim(images, reference), "psnr": psnr(images, reference)}

