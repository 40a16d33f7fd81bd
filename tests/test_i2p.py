"""Image to perturbation (kpfast.i2p) on CPU with small budgets: the U-Net, the loss, training of
h_θ against a frozen classifier, the feature extractor's weight loading, PNG export, metrics,
both attacks and the `kpfast i2p` command end to end."""
from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kpfast.cli.i2p import TIME_LIMIT_EXIT, main as i2p_main
from kpfast.data import DeviceLoader, ImageSet, make_synthetic
from kpfast.data.stats import IMAGENET
from kpfast.engine import evaluate, train
from kpfast.i2p import (Deadline, TimeLimitReached, TransformLoss, UNet, count_parameters, early_layers,
                        export_png, gan_attack, inverse_network_attack, load_png, protect, quantize,
                        train_net, train_transform, vgg16_relu2_2)
from kpfast.i2p.features import VGG16_FILE, find_vgg16_weights
from kpfast.i2p.metrics import blur3, psnr, ssim, summary
from kpfast.i2p.unet import unet_channels
from kpfast.models import create_model
from kpfast.normalize import Normalize
from kpfast.report.plots import box_plot
from single_thread import single_thread


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyClassifier(nn.Module):
    """conv-BN-ReLU x3 (two 2x2 pools), global average pooling, linear: quick to train on CPU, and
    smooth input gradients (average, not max pooling) for h_θ to learn from."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


NORMALIZE = Normalize(IMAGENET.mean, IMAGENET.std)


# --- U-Net -------------------------------------------------------------------------------------


def test_unet_has_the_papers_parameter_count():
    assert count_parameters(UNet()) == 34_527_171  # the authors' U-Net: 64 ... 1024 channels
    assert unet_channels(1.0) == [64, 128, 256, 512, 1024]
    assert unet_channels(0.25) == [16, 32, 64, 128, 256]


def test_unet_shapes_and_protected_range():
    torch.manual_seed(0)
    h = UNet(width=1 / 16)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert h(x.float() / 255).shape == (2, 3, 32, 32)
    xp = protect(h, x)  # uint8 is taken as [0, 1] images, never normalised
    assert xp.shape == (2, 3, 32, 32) and xp.dtype == torch.float32
    assert 0 < xp.min() and xp.max() < 1
    assert torch.allclose(xp, torch.sigmoid(h(x.float() / 255)))
    q = quantize(xp)
    assert q.dtype == torch.uint8 and (q.float() / 255 - xp).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="divisible by 16"):
        h(torch.rand(1, 3, 24, 24))
    with pytest.raises(ValueError, match="width"):
        UNet(width=0)


# --- loss ----------------------------------------------------------------------------------------


def test_transform_loss_is_ce_minus_lambda_feature_mse():
    torch.manual_seed(0)
    psi, feat = TinyClassifier(), early_layers(TinyClassifier(), 2)
    loss = TransformLoss(psi, feat, NORMALIZE, lam=0.5)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    xp = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    t = loss(xp, x, y)
    ce = F.cross_entropy(psi(NORMALIZE(xp)), y)
    mse = ((feat(NORMALIZE(xp)) - feat(NORMALIZE(x))) ** 2).mean()
    assert torch.allclose(t.ce, ce) and torch.allclose(t.feat, mse)
    assert torch.allclose(t.loss, ce - 0.5 * mse)
    t.loss.backward()
    assert xp.grad is not None and xp.grad.abs().sum() > 0
    assert all(p.grad is None for p in psi.parameters())  # ψ is frozen
    assert not psi.training and not feat.training
    with pytest.raises(ValueError, match="lambda"):
        TransformLoss(psi, feat, NORMALIZE, lam=-1)


# --- training h_θ against a frozen ψ ------------------------------------------------------------


def train_psi_and_transform(seed: int = 0):
    """ψ (a tiny classifier) trained quickly on plain synthetic images, then h_θ (U-Net width 1/8)
    trained against it with λ = 0.01: (ψ, h_θ, h_θ's FitResult, test set).

    h_θ gets 372 steps of 16 images at lr 0.02 (the paper's 0.1 at batch 128 is about 0.0125 at
    16). With 96 steps of 32 at lr 0.1 (width 1/4), protected accuracy ranged 20-76 % over seeds
    0-4: some runs collapsed onto two classes in the first epoch, and the step schedule had cut
    the rate before the others caught up. Some seeds still lose classes (seed 3: 58 %, flat from
    epoch 4 on, at lr 0.02 and 0.05 alike), hence the loose bounds below."""
    train_set, test_set = make_synthetic(1000, 300, seed=seed)
    torch.manual_seed(seed)
    psi = TinyClassifier()
    train(psi, NORMALIZE, DeviceLoader(train_set, 32, shuffle=True, augment=True, seed=seed), epochs=3, lr=0.05,
          label_smoothing=0.0, device="cpu", seed=seed, progress=False)
    torch.manual_seed(1000 + seed)
    features = early_layers(TinyClassifier(), 2, "random tiny CNN (tests only)")  # a fixed random F
    loss = TransformLoss(psi, features, NORMALIZE, lam=0.01)
    val, fit_set = train_set.subset(range(550)).split(0.1, seed=seed)
    h = UNet(width=1 / 8)
    result = train_transform(h, loss, fit_set, val, epochs=12, batch_size=16, lr=0.02, device="cpu", seed=seed,
                             progress=False, log=lambda _: None)
    return psi, h, result, test_set


def protected_quality(psi, h, test_set) -> dict[str, float]:
    """ψ's accuracy on plain and on protected 8-bit test images, and SSIM(x', x) against SSIM of a
    3x3 box blur of x (a barely damaged image)."""
    with torch.no_grad():
        protected = quantize(protect(h, test_set.images))
    return {"plain": evaluate(psi, NORMALIZE, [(test_set.images, test_set.labels)], "cpu")["accuracy"],
            "protected": evaluate(psi, NORMALIZE, [(protected, test_set.labels)], "cpu")["accuracy"],
            "ssim_protected": ssim(protected, test_set.images).mean().item(),
            "ssim_blur": ssim(blur3(test_set.images), test_set.images).mean().item()}


@pytest.fixture(scope="module")
def trained():
    with single_thread():
        return train_psi_and_transform()


def test_transform_training_lowers_the_loss(trained):
    _, _, result, _ = trained
    losses = [row["train_loss"] for row in result.history]
    # seeds 0-9 x 1 thread, seed 0 x 2 threads: first minus last epoch 0.99-2.19 (an h_θ that does not
    # learn: about 0)
    assert losses[-1] < losses[0] - 0.4, losses
    assert result.history[result.best_epoch - 1]["val_loss"] == result.best_val_loss
    assert {"train_ce", "train_feat", "train_acc", "val_ce", "val_feat", "val_acc"} <= set(result.history[0])


def test_psi_classifies_protected_images_that_look_unlike_the_plain_ones(trained):
    psi, h, _, test_set = trained
    quality = protected_quality(psi, h, test_set)
    # seeds 0-9 x 1 thread, seed 0 x 2 threads (chance 0.1): plain 0.92-0.97, protected 0.58-0.95
    # (seed 0: 0.93 with 1 thread, 0.69 with 2); SSIM(x', x) 0.06-0.26 against 0.42-0.43 for the
    # blur, a ratio of 0.13-0.61 (a copy of x: about 2.3)
    assert quality["plain"] > 0.5, quality
    assert quality["protected"] > 0.3, quality
    assert quality["ssim_protected"] < 0.8 * quality["ssim_blur"], quality


class _AfterOneEpoch:
    """A deadline that passes once the first epoch is done."""

    def __init__(self) -> None:
        self.calls = 0

    def check(self, upcoming: float = 0.0, what: str = "") -> None:
        self.calls += 1
        if self.calls > 1:
            raise TimeLimitReached("stop")


def test_training_stops_at_the_deadline_and_resumes_to_the_same_weights(tmp_path):
    train_set, _ = make_synthetic(64, 10)
    val, fit_set = train_set.split(0.25)

    def step(net, x, y):
        return {"loss": F.mse_loss(protect(net, x), x.float() / 255)}

    def run(checkpoint=None, deadline=Deadline()):
        torch.manual_seed(0)
        net = UNet(width=1 / 16)
        train_net(net, step, DeviceLoader(fit_set, 16, augment=True, seed=3), DeviceLoader(val, 32, shuffle=False),
                  epochs=3, device="cpu", checkpoint=checkpoint, deadline=deadline, progress=False)
        return net

    reference = run()
    with pytest.raises(TimeLimitReached):
        run(tmp_path / "fit.ckpt", _AfterOneEpoch())
    resumed = run(tmp_path / "fit.ckpt")
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(TimeLimitReached, match="run the same command again"):
        Deadline.after(-1).check()


# --- feature extractor ---------------------------------------------------------------------------

# torchvision's vgg16().features: conv layers at these indices (ReLUs between, pools at 4, 9, ...).
_VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256)}


def _random_vgg16_state(prefix: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, (c_out, c_in) in _VGG16_CONVS.items():
        state[f"{prefix}{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1
        state[f"{prefix}{i}.bias"] = torch.randn(c_out, generator=g) * 0.1
    if prefix:  # a full model's dict also holds the classifier
        state["classifier.0.weight"] = torch.randn(4, 8, generator=g)
    return state


def _relu2_2_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, prefix: str) -> torch.Tensor:
    def conv(i, t):
        return F.relu(F.conv2d(t, state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"], padding=1))
    return conv(7, conv(5, F.max_pool2d(conv(2, conv(0, x)), 2)))


@pytest.mark.parametrize("prefix", ["", "features."])
def test_vgg16_relu2_2_loads_torchvision_weights(tmp_path, prefix):
    state = _random_vgg16_state(prefix)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    feats = vgg16_relu2_2(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(feats(x), _relu2_2_by_hand(state, x, prefix), atol=1e-5)
    assert feats(x).shape == (2, 128, 16, 16)
    assert "ImageNet VGG-16 relu2_2" in feats.describe()
    assert all(not p.requires_grad for p in feats.parameters())


def test_vgg16_weights_are_found_in_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_vgg16_weights() is None
    with pytest.raises(FileNotFoundError, match=VGG16_FILE):
        vgg16_relu2_2()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(_random_vgg16_state("features."), cache / VGG16_FILE)
    assert find_vgg16_weights() == cache / VGG16_FILE
    assert str(cache / VGG16_FILE) in vgg16_relu2_2().describe()
    with pytest.raises(FileNotFoundError, match="not found"):
        vgg16_relu2_2(tmp_path / "missing.pth")


def test_vgg16_weights_with_wrong_keys_or_shapes_are_refused(tmp_path):
    state = _random_vgg16_state("")
    del state["7.bias"]
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="missing 7.bias"):
        vgg16_relu2_2(tmp_path / "a.pth")
    state = _random_vgg16_state("")
    state["5.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="5.weight has shape"):
        vgg16_relu2_2(tmp_path / "b.pth")


def test_fallback_features_are_early_layers_of_a_cifar_classifier():
    vgg = create_model("vgg16_bn", 10)
    feats = early_layers(vgg, 4)
    # conv-BN-ReLU, conv-BN-ReLU, pool, conv-BN-ReLU, conv-BN-ReLU: relu2_2 depth
    assert len(feats.layers) == 13 and feats(torch.rand(1, 3, 32, 32)).shape == (1, 128, 16, 16)
    assert not feats.layers.training and all(not p.requires_grad for p in feats.parameters())
    feats.train()
    assert not feats.layers.training  # stays frozen
    with pytest.raises(ValueError, match="no `features`"):
        early_layers(create_model("resnet20", 10))
    with pytest.raises(ValueError, match="fewer than 99"):
        early_layers(vgg, 99)


# --- export and metrics --------------------------------------------------------------------------


def test_png_export_round_trip_is_exact(tmp_path):
    _, test_set = make_synthetic(10, 25)
    torch.manual_seed(0)
    protected = quantize(protect(UNet(width=1 / 16), test_set.images))  # the 8-bit x' evaluated
    folder = export_png(ImageSet(protected, test_set.labels, test_set.classes), tmp_path, "test", progress=False)
    assert folder == tmp_path / "test" and len(list(folder.glob("*/*.png"))) == 25
    assert not (tmp_path / ".test.partial").exists()
    back = load_png(tmp_path, "test")
    assert torch.equal(back.images, protected) and torch.equal(back.labels, test_set.labels)
    assert back.classes == test_set.classes
    with pytest.raises(FileExistsError):
        export_png(ImageSet(protected, test_set.labels, test_set.classes), tmp_path, "test", progress=False)
    with pytest.raises(FileNotFoundError, match="not a complete"):
        load_png(tmp_path, "train")


def test_metrics_against_an_independent_computation(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g)
    b = (a.int() + torch.randint(-20, 21, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    mse = ((a.double() - b.double()) / 255).pow(2).mean((1, 2, 3))
    assert torch.allclose(psnr(b, a).double(), 10 * torch.log10(1 / mse), atol=1e-4)
    assert torch.allclose(ssim(a, a), torch.ones(5))
    s = ssim(b, a)
    assert s.shape == (5,) and ((0 < s) & (s < 1)).all()
    assert torch.allclose(ssim(a.float() / 255, b.float() / 255), ssim(a, b), atol=1e-6)  # uint8 = x/255
    assert summary(torch.tensor([1.0, 2.0, 6.0])) == {"mean": 3.0, "median": 2.0}
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(blur3(x)[0, :, 3, 3], x[0, :, 2:5, 2:5].mean((1, 2)))
    box_plot(tmp_path / "box.png", {"a": s, "b": psnr(b, a)}, "value")
    assert (tmp_path / "box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- attacks -------------------------------------------------------------------------------------


def test_both_attacks_run_and_report_per_image_metrics():
    train_set, test_set = make_synthetic(80, 12)
    torch.manual_seed(0)
    h = UNet(width=1 / 16)
    with torch.no_grad():
        protected_train = ImageSet(quantize(protect(h, train_set.images)), train_set.labels, train_set.classes)
        protected_test = quantize(protect(h, test_set.images))
    itn, _ = inverse_network_attack(protected_train, train_set, protected_test, test_set.images, epochs=1,
                                    width=1 / 16, batch_size=32, device="cpu", progress=False)
    gan, _ = gan_attack(protected_train, train_set, protected_test, test_set.images, epochs=1, width=1 / 16,
                        batch_size=16, device="cpu", progress=False)
    for result in (itn, gan):
        assert result.restored.shape == test_set.images.shape and result.restored.dtype == torch.uint8
        assert result.per_image["ssim"].shape == (12,) and result.per_image["psnr"].shape == (12,)
        assert set(result.metrics()) == {"ssim", "psnr"} and set(result.metrics()["ssim"]) == {"mean", "median"}
        assert len(result.history) == 1
    assert {"d_loss", "g_loss"} <= set(gan.history[0])


def test_gan_attack_resumes_to_the_same_generator(tmp_path):
    train_set, test_set = make_synthetic(64, 4)
    common = dict(epochs=2, width=1 / 16, batch_size=16, device="cpu", progress=False, log=lambda _: None)
    args = (train_set, train_set, test_set.images, test_set.images)  # any uint8 sets will do here
    reference, _ = gan_attack(*args, **common)
    with pytest.raises(TimeLimitReached):
        gan_attack(*args, checkpoint=tmp_path / "gan.ckpt", deadline=_AfterOneEpoch(), **common)
    resumed, _ = gan_attack(*args, checkpoint=tmp_path / "gan.ckpt", **common)
    assert torch.equal(resumed.restored, reference.restored)
    assert [row["g_loss"] for row in resumed.history] == [row["g_loss"] for row in reference.history]


# --- the command ---------------------------------------------------------------------------------

TINY = ["--data", "synthetic", "--classifiers", "small_cnn", "--feature-model", "small_cnn",
        "--lambdas", "0.01,0.1", "--epochs-classifier", "1", "--epochs-features", "1", "--epochs-transform", "1",
        "--epochs-attack", "1", "--epochs-gan", "1", "--width", "0.0625", "--gan-width", "0.0625",
        "--batch-size", "32", "--train-subset", "200", "--test-subset", "40", "--device", "cpu", "--no-progress"]


def test_cli_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "i2p"
    assert i2p_main(["run", *TINY, "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    assert "## Accuracy, plain vs protected" in md and "## λ trade-off (small_cnn)" in md
    assert "ITN attack" in md and "GAN attack" in md and "fallback" in md
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"small_cnn-lam0.01", "small_cnn-lam0.1"}
    assert set(results["attacks"]) == {"itn", "gan"}
    acc = results["runs"]["small_cnn-lam0.01"]["accuracy"]
    assert set(acc) == {"plain", "protected_float", "protected_png"} and all(0 <= v <= 1 for v in acc.values())
    for name in ("grid.png", "ssim_box.png", "psnr_box.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.rglob("*.ckpt"))  # finished stages leave no resume state behind

    # A second call skips every stage and rebuilds the same report.
    began = time.perf_counter()
    assert i2p_main(["run", *TINY, "--out", str(out)]) == 0
    assert time.perf_counter() - began < 10
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]

    # Other settings in the same folder are refused, clearly.
    assert i2p_main(["run", *TINY, "--out", str(out), "--epochs-transform", "2"]) == 2
    assert "epochs_transform: 1 -> 2" in capsys.readouterr().err

    # A trained h_θ protects a data set as PNG files.
    assert i2p_main(["export", "--transform", str(out / "transforms" / "small_cnn-lam0.01.pt"), "--data", "synthetic",
                     "--splits", "test", "--out", str(tmp_path / "png"), "--device", "cpu"]) == 0
    assert len(load_png(tmp_path / "png", "test")) == 1000


def test_cli_time_limit_stops_cleanly(tmp_path, capsys):
    assert i2p_main(["run", *TINY, "--out", str(tmp_path), "--time-limit", "0"]) == TIME_LIMIT_EXIT
    assert "run the same command again" in capsys.readouterr().err
    assert not (tmp_path / "results.md").exists()


def test_resume_reads_the_checkpoint_once(tmp_path, monkeypatch):
    """A width-1 U-Net's checkpoint is about 400 MB: resuming used to load it twice."""
    train_set, _ = make_synthetic(48, 10)
    val, fit_set = train_set.split(0.25)

    def step(net, x, y):
        return {"loss": F.mse_loss(protect(net, x), x.float() / 255)}

    def run(deadline=Deadline()):
        torch.manual_seed(0)
        train_net(UNet(width=1 / 16), step, DeviceLoader(fit_set, 16, seed=3), DeviceLoader(val, 32, shuffle=False),
                  epochs=2, device="cpu", checkpoint=tmp_path / "net.ckpt", deadline=deadline, progress=False,
                  log=lambda _: None)

    with pytest.raises(TimeLimitReached):
        run(_AfterOneEpoch())
    reads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *args, **kwargs: (reads.append(f), real_load(f, *args, **kwargs))[1])
    run()
    assert [str(f) for f in reads] == [str(tmp_path / "net.ckpt")]


def test_help_says_how_a_user_runs_it(capsys):
    with pytest.raises(SystemExit):
        i2p_main(["--help"])
    text = capsys.readouterr().out
    assert "kpfast i2p run --data cifar10 --device cuda --out runs/i2p" in text and "--time-limit SECONDS" in text
    assert "$OUT" not in text and "carry" not in text  # no word of one particular machine's job runner
