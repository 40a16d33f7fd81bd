"""Stand-ins for the attack tests: a classifier that needs its key by construction (no training, so
no learning noise), labelled data for it, and tiny idx files for the command line. The test here
checks that the stand-in behaves as the attack tests assume."""
import gzip

import numpy as np
import torch
from torch import nn

from kpfast import BlockTransform, KeySet
from kpfast.protection.attacks.scoring import StolenModel


class TemplateNet(nn.Module):
    """Nearest class template: logits = -mean((x - template_c)^2) over the (transformed) image."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        self.num_classes, self.in_channels = templates.shape[0], templates.shape[1]
        self.register_buffer("templates", templates.flatten(1))

    def forward(self, x):
        return -(x.flatten(1)[:, None, :] - self.templates[None]).square().mean(2)


def labelled(n: int, templates: torch.Tensor, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images: the class's template with a fraction `noise` of its values replaced by random
    bytes (sparse noise: FFX turns any change of a byte into an unrelated code)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(templates), (n,), generator=g)
    shape = (n, *templates.shape[1:])
    replace = torch.rand(shape, generator=g) < noise
    return torch.where(replace, torch.randint(0, 256, shape, generator=g, dtype=torch.uint8), templates[y]), y


def keyed_model(key: KeySet, ops, *, classes: int = 4, size: int = 8, seed: int = 0, templates=None):
    """A StolenModel whose network is the nearest template of the key-transformed class images.
    Returns it with the plain uint8 templates."""
    if templates is None:  # dark or bright values, never mid-grey (where NP changes little)
        g = torch.Generator().manual_seed(seed)
        shape = (classes, key.channels, size, size)
        dark = torch.randint(20, 90, shape, generator=g)
        templates = torch.where(torch.rand(shape, generator=g) < 0.5, dark, dark + 145).to(torch.uint8)
    mean, std = (0.5,) * key.channels, (0.25,) * key.channels
    transform = BlockTransform(key, ops, mean, std)
    with torch.no_grad():
        net = TemplateNet(transform(templates)).eval()
    return StolenModel(net, transform.config(), key.fingerprint(), "template", torch.device("cpu")), templates


def write_idx(path, array: np.ndarray) -> None:
    """An idx file (the Fashion-MNIST format): zeros, type 0x08 (uint8), dimensions, values."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_like(folder, n_train: int = 300, n_test: int = 100, size: int = 8, seed: int = 0) -> None:
    """Tiny learnable grey data in Fashion-MNIST's files: 10 class templates plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (10, 1, size, size), generator=g).to(torch.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed + 1), ("t10k", n_test, seed + 2)):
        x, y = labelled(n, templates, s)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[:, 0].numpy())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y.numpy())


def test_the_template_model_needs_its_key():
    key = KeySet.generate(2, 3, rng=np.random.default_rng(0))
    stolen, templates = keyed_model(key, ("shuffle", "negpos", "ffx"))
    x, y = labelled(64, templates, seed=1)
    wrong = KeySet.generate_many(8, 2, 3, rng=np.random.default_rng(1))
    accuracy = stolen.accuracy([key, *wrong], x, y)
    assert accuracy[0] == 1.0 and accuracy[1:].max() < 0.75
