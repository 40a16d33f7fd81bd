"""Image classifiers for 32x32 (CIFAR) and 28x28 (Fashion-MNIST) inputs, by name."""

from __future__ import annotations

from torch import nn

from .convmixer import ConvMixer
from .resnet_cifar import ResNet18, ResNet20
from .small_cnn import SmallCNN
from .vgg_cifar import VGG16BN
from .vit import ViT

_MODELS: dict[str, type[nn.Module]] = {
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "vgg16_bn": VGG16BN,
    "small_cnn": SmallCNN,
    # patch-embedding models: a key of block size = patch size (4) folds into their weights
    "vit": ViT,
    "convmixer": ConvMixer,
}


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model. Models record `num_classes` and `in_channels`."""
    try:
        cls = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None
    return cls(num_classes=num_classes, in_channels=in_channels)


def model_name(model: nn.Module) -> str:
    """The registry name of a model built by `create_model` (used to rebuild it from a checkpoint)."""
    for name, cls in _MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"{type(model).__name__} is not a registered kpfast model "
        f"(available: {', '.join(list_models())}); only those can be saved and rebuilt by name"
    )


__all__ = ["ConvMixer", "ResNet18", "ResNet20", "SmallCNN", "VGG16BN", "ViT", "create_model", "list_models",
           "model_name"]
