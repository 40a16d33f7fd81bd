import pytest
import torch

from kpfast.models import create_model, list_models, model_name

# Expected parameter counts for 10 classes (and their published sizes).
PARAM_RANGES = {
    "resnet18": (11.1e6, 11.25e6),  # kuangliu ResNet-18: 11,173,962
    "resnet20": (0.26e6, 0.28e6),  # He et al.: 0.27 M
    "vgg16_bn": (14.5e6, 15.5e6),  # about 15 M
    "small_cnn": (0.1e6, 0.9e6),  # a few hundred k
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
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*resnet18.*resnet20.*small_cnn.*vgg16_bn"):
        create_model("resnet50", 10)


def test_model_name_round_trip():
    for name in list_models():
        assert model_name(create_model(name, 10)) == name
    with pytest.raises(ValueError, match="not a registered kpfast model"):
        model_name(torch.nn.Linear(2, 2))
