"""Folding a key into timm's VisionTransformer (tiny configurations, random weights, no download):
protected(transform(x)) equals plain(x) to float32 rounding with and without timm's
no_embed_class, with register tokens, average or attention pooling, dynamic image size and a stem
without bias; the inverse and re-keying round-trip. Skipped where timm cannot be imported
(``pip install "kpfast[vit]"``)."""
import pytest
import torch

try:
    from timm.models.vision_transformer import VisionTransformer
except Exception as error:  # not installed, or its torchvision does not load beside this torch
    pytest.skip(f"timm cannot be imported ({type(error).__name__}: {error}); install the pinned pair with "
                "pip install 'kpfast[vit]' beside a torch it supports to test the timm path", allow_module_level=True)

from kpfast import KeySet  # noqa: E402
from kpfast.errors import ConfigError  # noqa: E402
from kpfast.protection.model_transform import (FOLDABLE, rekey_model, transform_model,  # noqa: E402
                                               untransform_model)
from test_model_transform import (EXACT, VIT_CHAINS, generator, images, plain_logits, protected_logits,  # noqa: E402
                                  relative_error, state_difference, statistics)

VARIANTS = {
    "class token": {},
    "no_embed_class": dict(no_embed_class=True),
    "register tokens": dict(reg_tokens=2),
    "register tokens, no_embed_class": dict(reg_tokens=2, no_embed_class=True),
    "average pooling": dict(class_token=False, global_pool="avg"),
    "attention pooling": dict(global_pool="map"),
    "dynamic image size": dict(dynamic_img_size=True),
    "stem without bias": dict(pre_norm=True),
}


def tiny_vit(g: torch.Generator, channels: int = 3, size: int = 32, **kwargs) -> VisionTransformer:
    """A 2-block ViT with 4x4 patches and random weights of unit-scale activations."""
    model = VisionTransformer(img_size=size, patch_size=4, in_chans=channels, num_classes=10, embed_dim=48,
                              depth=2, num_heads=3, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 and "embed" not in name and "token" not in name else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 * (0.3 if fan_in == 1 else 1))
    return model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_protected_equals_plain_for_every_chain(variant):
    # Measured with timm 1.0.29 and torch 2.14.1, 5 seeds, every variant and chain: largest
    # |protected - plain| 7.2e-7, 5.2e-7 of the largest |logit| (logits up to 1.75); EXACT is 1e-5.
    g = generator()
    model = tiny_vit(g, **VARIANTS[variant])
    mean, std = statistics("random", 3, g)
    x = images(8, 3, 32, g)
    plain = plain_logits(model, x, mean, std)
    for ops in VIT_CHAINS:
        keys = KeySet.generate(4, 3, grid=(8, 8), rng=g)
        protected = transform_model(model, keys, ops, mean=mean, std=std)
        assert relative_error(protected_logits(protected, keys, ops, x, mean, std), plain) < EXACT, ops
    wrong = KeySet.generate(4, 3, grid=(8, 8), rng=g)
    got = protected_logits(transform_model(model, keys, FOLDABLE, mean=mean, std=std), wrong, FOLDABLE, x, mean, std)
    assert (got - plain).abs().mean() > 100 * EXACT * plain.abs().max()


def test_grey_28x28_images():
    g = generator()
    model = tiny_vit(g, channels=1, size=28)
    keys = KeySet.generate(4, 1, grid=(7, 7), rng=g)
    x = images(8, 1, 28, g)
    protected = transform_model(model, keys, FOLDABLE, mean=(0.28,), std=(0.35,))
    assert relative_error(protected_logits(protected, keys, FOLDABLE, x, (0.28,), (0.35,)),
                          plain_logits(model, x, (0.28,), (0.35,))) < EXACT


@pytest.mark.parametrize("variant", ["class token", "no_embed_class", "register tokens"])
def test_only_the_patch_tokens_positions_move(variant):
    g = generator()
    model = tiny_vit(g, **VARIANTS[variant])
    keys = KeySet.generate(4, 3, grid=(8, 8), rng=g)
    protected = transform_model(model, keys, ("scramble",))
    prefix = model.pos_embed.shape[1] - 64  # 0 with no_embed_class; 1 (+2 registers) otherwise
    assert prefix == (0 if model.no_embed_class else model.num_prefix_tokens)
    assert torch.equal(protected.pos_embed[:, :prefix], model.pos_embed[:, :prefix])
    assert torch.equal(protected.pos_embed[:, prefix:], model.pos_embed[:, prefix:][:, keys.block_perm])
    assert torch.equal(protected.cls_token, model.cls_token)


def test_inverse_and_rekeying_round_trip():
    g = generator()
    model = tiny_vit(g, no_embed_class=True)
    old, new = KeySet.generate_many(2, 4, 3, grid=(8, 8), rng=g)
    half = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    protected = transform_model(model, old, FOLDABLE, **half)
    assert state_difference(untransform_model(protected, old, FOLDABLE, **half), model) == 0
    moved = rekey_model(protected, old, new, FOLDABLE, **half)
    assert state_difference(moved, transform_model(model, new, FOLDABLE, **half)) == 0
    assert state_difference(untransform_model(moved, new, FOLDABLE, **half), model) == 0


def test_refusals_name_the_reason():
    g = generator()
    keys = KeySet.generate(4, 3, grid=(8, 8), rng=g)
    with pytest.raises(ConfigError, match="no position embedding.*protect nothing"):
        transform_model(tiny_vit(g, pos_embed="none"), keys, ("scramble",))
    transform_model(tiny_vit(g, pos_embed="none"), keys, ("shuffle", "negpos"))  # the rest folds
    with pytest.raises(ConfigError, match="key scrambles a 4x4 grid.*for 8x8 patches"):
        transform_model(tiny_vit(g), KeySet.generate(4, 3, grid=(4, 4), rng=g), ("scramble",))
    with pytest.raises(ConfigError, match="FFX cannot be folded"):
        transform_model(tiny_vit(g), keys, ("ffx",))
    with pytest.raises(ConfigError, match="key is for 8x8 blocks"):
        transform_model(tiny_vit(g), KeySet.generate(8, 3, rng=g), ("shuffle",))
