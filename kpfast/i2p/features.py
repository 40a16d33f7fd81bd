"""The frozen feature extractor F of the transform loss.

The paper uses torchvision's ImageNet VGG-16 up to relu2_2 (`vgg16().features[:9]`, a Johnson-
style perceptual layer). `vgg16_relu2_2` builds those nine layers in plain torch, with the same
state-dict keys ("0.weight", "0.bias", "2.weight", ... "7.bias"), and loads torchvision's weights
from a local file (kpfast downloads nothing it cannot verify against a checksum).

Fallback when no such file exists (documented deviation from the paper): `early_layers` of a
separately trained, frozen CIFAR classifier, by default a CIFAR VGG-16-BN cut after its fourth
ReLU, which is the same depth as relu2_2 (conv-conv-pool-conv-conv). It must not be ψ itself:
pushing ψ's own features away would fight the cross-entropy term inside one network.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..engine.checkpoint import read
from ..errors import ConfigError, DataError, DataNotFoundError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's name for the ImageNet VGG-16 weights
_VGG16_RELU2_2 = (64, 64, "M", 128, 128)  # convs (3x3, padding 1) each followed by a ReLU


class FeatureExtractor(nn.Module):
    """A frozen `layers` module (eval mode, no parameter gradients) that says what it is."""

    def __init__(self, layers: nn.Module, description: str) -> None:
        super().__init__()
        self.layers = layers
        self.description = description
        for p in self.layers.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # frozen: BN statistics and dropout never change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def describe(self) -> str:
        return self.description


def vgg16_layers() -> nn.Sequential:
    """VGG-16 `features[:9]` (conv1_1 ... relu2_2) with torchvision's layer indices."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_RELU2_2:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    return nn.Sequential(*layers)


def default_vgg16_path() -> Path:
    """Where torchvision caches the weights: `$TORCH_HOME/hub/checkpoints/` (default ~/.cache/torch)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints" / VGG16_FILE


def find_vgg16_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """`path` if given (it must exist), else torchvision's cache file if present, else None."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"VGG-16 weights not found: {path}")
        return path
    default = default_vgg16_path()
    return default if default.is_file() else None


def vgg16_relu2_2(weights_path: str | os.PathLike[str] | None = None) -> FeatureExtractor:
    """ImageNet VGG-16 up to relu2_2 from a torchvision state dict (the full model's, with
    "features." keys, or `vgg16().features`'s alone). Raises FileNotFoundError when neither
    `weights_path` nor `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` exists."""
    path = find_vgg16_weights(weights_path)
    if path is None:
        raise DataNotFoundError(f"no ImageNet VGG-16 weights: pass a path or put {VGG16_FILE} "
                                f"in {default_vgg16_path().parent}")
    layers = vgg16_layers()
    state = read(path, what="VGG-16 weights file")
    layers.load_state_dict(_features_state(state, layers, path))
    return FeatureExtractor(layers, f"ImageNet VGG-16 relu2_2 (torchvision weights from {path})")


def _features_state(state: Mapping[str, torch.Tensor], layers: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The entries of `layers` from a torchvision VGG-16 state dict, with clear errors."""
    if not isinstance(state, Mapping):
        raise DataError(f"{path} does not hold a state dict")
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    wanted = layers.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise DataError(f"{path} is not a VGG-16 state dict: missing {', '.join(missing)}")
    for k, v in wanted.items():
        if state[k].shape != v.shape:
            raise DataError(f"{path}: {k} has shape {tuple(state[k].shape)}, VGG-16 needs {tuple(v.shape)}")
    return {k: state[k] for k in wanted}


def early_layers(classifier: nn.Module, relus: int = 4, description: str = "") -> FeatureExtractor:
    """The prefix of `classifier.features` up to and including its `relus`-th ReLU, frozen.

    With a CIFAR VGG-16-BN and relus=4 this is conv1_1 ... relu2_2 with batch norm: the
    fallback for the ImageNet VGG-16 of the paper."""
    body = getattr(classifier, "features", None)
    if not isinstance(body, nn.Sequential):
        raise ConfigError(f"{type(classifier).__name__} has no `features` Sequential to cut early layers from "
                         "(use a VGG-style model, e.g. vgg16_bn or small_cnn)")
    seen = 0
    for i, layer in enumerate(body):
        seen += isinstance(layer, nn.ReLU)
        if seen == relus:
            return FeatureExtractor(body[: i + 1], description or
                                    f"early layers of {type(classifier).__name__} (up to ReLU {relus})")
    raise ConfigError(f"{type(classifier).__name__}.features has only {seen} ReLUs, fewer than {relus}")
