import pytest
import torch

from kpfast.models import create_model, list_models, model_name

# Expected parameter counts for 10 classes (and their published sizes).
PARAM_RANGES = {
    "resnet18": (11.1e6, 11.25e6),  # kuangliu ResNet-18: 11,173,962
    "resnet20": (0.26e6, 0.28e6),  # He et al.: 0.27 M
    "vgg16_bn": (14.5e6, 15.5e6),  # about 15 M
    "small_cnn": (0.1e6, 0.9e6),  # a few hundred k
    "vit": (0.25e6, 0.35e6),  # dim 96, depth 4, 4 heads, MLP ratio 2: 308,170
    "convmixer": (0.1e6, 0.15e6),  # ConvMixer-128/6, kernel 5, patch 4: 125,834
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_all_models():
    assert list_models() == sorted(PARAM_RANGES)


@pytest.mark.parametrize("name", sorted(PARAM_RANGES))
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_output_shape(name, channels, size):
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert (model.num_classes, model.in_channels) == (7, channels)


@pytest.mark.parametrize("name", sorted(PARAM_RANGES))
def test_parameter_count(name):
    low, high = PARAM_RANGES[name]
    assert low <= n_params(create_model(name, 10)) <= high


def test_exact_sizes_of_reference_architectures():
    assert n_params(create_model("resnet18", 10)) == 11_173_962
    assert n_params(create_model("resnet20", 10)) == 269_722  # option A: shortcuts have no weights


def test_smallest_input_for_every_model():
    for name in list_models():
        with torch.no_grad():
            assert create_model(name, 3).eval()(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_unknown_name_lists_the_choices():
    names = "convmixer.*resnet18.*resnet20.*small_cnn.*vgg16_bn.*vit"
    with pytest.raises(ValueError, match=f"unknown model 'resnet50'.*{names}"):
        create_model("resnet50", 10)


def test_model_name_round_trip():
    for name in list_models():
        assert model_name(create_model(name, 10)) == name
    with pytest.raises(ValueError, match="not a registered kpfast model"):
        model_name(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["vit", "convmixer"])
def test_patch_embedding_models_have_a_non_overlapping_stem(name):
    model = create_model(name, 10)
    stem = model.patch_embed
    assert stem.kernel_size == stem.stride == (model.patch_size,) * 2 == (4, 4) and stem.padding == (0, 0)


def test_vit_uses_the_top_left_position_embeddings_for_smaller_images():
    # A 28x28 image is 7x7 patches: the ViT must equal one whose 8x8 grid of position embeddings
    # is cut to those 7x7 (written out by hand here: patch tokens, class token, blocks, head).
    torch.manual_seed(int(torch.randint(1 << 30, ())))
    model = create_model("vit", 5, in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed[:, :, :7, :7]
        tokens = torch.cat([model.cls_token.expand(3, -1, -1), tokens.flatten(2).transpose(1, 2)], 1)
        for block in model.blocks:
            h = block.norm1(tokens)
            q, k, v = block.attn.qkv(h).chunk(3, dim=-1)
            heads = block.attn.heads
            split = lambda t: t.view(3, 50, heads, -1).transpose(1, 2)  # noqa: E731
            weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (q.shape[-1] // heads) ** 0.5, -1)
            tokens = tokens + block.attn.proj((weights @ split(v)).transpose(1, 2).reshape(3, 50, -1))
            tokens = tokens + block.mlp(block.norm2(tokens))
        want = model.head(model.norm(tokens)[:, 0])
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="larger than this ViT's position embeddings"):
        model(torch.randn(1, 1, 36, 36))
