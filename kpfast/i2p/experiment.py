"""The whole image-to-perturbation experiment, end to end, resumable stage by stage.

Stages, each skipped when its output file exists under `out/`::

    1. features/        F: ImageNet VGG-16 relu2_2 if its weights are on disk, else the fallback, a
                        separately trained CIFAR classifier cut at relu2_2 depth (see features.py);
    2. classifiers/     ψ per classifier, trained on plain images (kpfast.engine.train, step schedule);
    3. transforms/      h_θ per run: every classifier at `lam`, plus the first classifier at every
                        λ of `lambdas` (the trade-off sweep);
    4. eval/            per run: ψ's accuracy on plain, protected (float) and protected (8-bit PNG,
                        exported and reloaded) test images; SSIM/PSNR of the PNGs against plain x;
    5. attacks/         ITN (paired) and GAN (unpaired) attacks on the first classifier's h_θ at `lam`;
    6. report           results.md, results.json, grid.png, ssim_box.png, psnr_box.png (always rebuilt).

Training stages save resumable state (every epoch for the classifiers, every CHECKPOINT_EVERY
seconds for the U-Nets, and always before stopping); with `time_limit` the run stops cleanly
between epochs (`TimeLimitReached`) and the same command continues where it stopped.

Under torchrun every rank trains each network (data-parallel, kpfast.engine.distributed); rank 0
decides which stages are done, evaluates, exports, writes every file and logs. On several
machines `out` must be on a file system they share (every rank reads the stages' results).
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_json, write_text
from ..data import DeviceLoader, ImageSet, load_dataset
from ..data.stats import IMAGENET
from ..engine import Deadline, default_device, device_name, evaluate, resolve_device, train
from ..engine.classifier import batches
from ..engine import checkpoint as ckpt
from ..engine.ranks import Ranks
from ..errors import CheckpointError, ConfigError, DataError
from ..models import create_model
from ..normalize import Normalize
from ..report.grid import save_grid
from ..report.plots import box_plot
from ..report.tables import markdown_table
from .attacks import AttackResult, gan_attack, inverse_network_attack
from .export import export_png, load_png
from .features import FeatureExtractor, early_layers, find_vgg16_weights, vgg16_relu2_2
from .loss import TransformLoss, protect_all, quantize
from .metrics import SSIM_WINDOW, blur3, image_metrics, summary
from .train import train_transform
from .unet import UNet, count_parameters

CHECKPOINT_EVERY = 120.0  # seconds between resumable saves inside a stage (and always at a deadline)
GRID_CLASSES = 10  # grid rows: the first test image of each of the first classes
FEATURE_RELUS = 4  # relu2_2 is the fourth ReLU of VGG-16


@dataclass
class Config:
    out: str = "runs/i2p"
    data: str = "cifar10"  # a kpfast.data.load_dataset name, or an image folder / zip
    data_root: str | None = None
    classifiers: tuple[str, ...] = ("resnet20", "vgg16_bn")
    lam: float = 0.01  # λ of every classifier's h_θ (the authors' example value)
    # The trade-off sweep (first classifier only), upwards from the paper's value: the fallback F's
    # feature distance is small (about 0.15 on CIFAR-10 at the start), so smaller λ change little.
    lambdas: tuple[float, ...] = (0.01, 0.1, 1.0)
    # Paper: 200 epochs for every network. These defaults fit the whole CIFAR-10 run into about
    # 25 minutes of one recent data-centre GPU (an estimate).
    epochs_classifier: int = 40
    epochs_features: int = 15
    epochs_transform: int = 25
    epochs_attack: int = 20
    epochs_gan: int = 15
    width: float = 1.0  # U-Net width of h_θ and of the ITN attacker (1 = the paper's 34.5 M)
    gan_width: float = 0.25
    feature_model: str = "vgg16_bn"  # the fallback F's classifier
    vgg_weights: str | None = None  # torchvision vgg16 state dict; default: torch's hub cache
    batch_size: int = 128
    train_subset: int | None = None  # ImageSet.first_per_class subsets for cheap runs
    test_subset: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    device: str = default_device()
    time_limit: float | None = None  # seconds for this call; None: no limit
    progress: bool = True

    # Settings that may change between calls on the same `out` without making its outputs stale
    # (runs are keyed by classifier and λ, so the lists may grow).
    VOLATILE = ("out", "device", "time_limit", "progress", "classifiers", "lambdas")

    @property
    def lr(self) -> float:
        """SGD learning rate of ψ, h_θ and the ITN: the paper's 0.1 at batch 128, scaled linearly
        with the batch (small batches at 0.1 stall h_θ: ψ's accuracy on x' stays near chance)."""
        return 0.1 * self.batch_size / 128

    def runs(self) -> list[tuple[str, float]]:
        """(classifier, λ) of every h_θ: each classifier at `lam`, the first one across `lambdas`."""
        if not self.classifiers:
            raise ConfigError("need at least one classifier")
        runs = [(c, self.lam) for c in self.classifiers]
        return runs + [(self.classifiers[0], lam) for lam in self.lambdas if lam != self.lam]


def run_key(classifier: str, lam: float) -> str:
    return f"{classifier}-lam{lam:g}"


@dataclass
class _Data:
    train: ImageSet  # everything the attacker and the fit/val split come from
    fit: ImageSet
    val: ImageSet
    test: ImageSet
    description: str


@dataclass
class _Context:
    cfg: Config
    out: Path
    data: _Data
    normalize: nn.Module
    deadline: Deadline
    log: Callable[[str], None]
    ranks: Ranks

    def done(self, file: Path) -> bool:
        """Whether a stage's output exists, as rank 0 sees it (every rank then does the same)."""
        return self.ranks.from_main(file.exists)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0 (writing or evaluating), its result on every rank."""
        return self.ranks.from_main(fn)


# ---------------------------------------------------------------------------------------------
# helpers


def _load(path: Path) -> Any:
    return ckpt.read(path, what="stage result")


def _load_data(cfg: Config) -> _Data:
    train_set, test_set = load_dataset(cfg.data, cfg.data_root, progress=cfg.progress)
    if cfg.train_subset is not None:
        train_set = train_set.first_per_class(cfg.train_subset)
    if cfg.test_subset is not None:
        test_set = test_set.first_per_class(cfg.test_subset)
    val, fit = train_set.split(cfg.val_fraction, seed=cfg.seed)
    if len(val) == 0 or len(fit) == 0:
        raise DataError(f"the validation split of {len(train_set)} images is empty on one side; use more images")
    desc = (f"{cfg.data}{' (' + cfg.data_root + ')' if cfg.data_root else ''}: {len(fit)} train / {len(val)} "
            f"validation (stratified {cfg.val_fraction:.0%} of the train split) / {len(test_set)} test images, "
            f"{train_set.num_classes} classes, {tuple(train_set.images.shape[1:])}")
    return _Data(train_set, fit, val, test_set, desc)


def _check_config(out: Path, cfg: Config) -> None:
    """Refuse to mix the outputs of runs with different settings in one folder."""
    current = {k: v for k, v in asdict(cfg).items() if k not in Config.VOLATILE}
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(current)).items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise CheckpointError(f"{out} holds a run with other settings ({details}); use another --out")
    else:
        write_json(path, current, indent=1)


def _accuracy(model: nn.Module, ctx: _Context, images: torch.Tensor, labels: torch.Tensor) -> float:
    return evaluate(model, ctx.normalize, batches(images, labels), ctx.cfg.device)["accuracy"]


def grid_indices(labels: torch.Tensor, n: int = GRID_CLASSES) -> torch.Tensor:
    """The first image of each class (up to `n` classes), so the grid shows every kind of image."""
    firsts = [int(torch.nonzero(labels == c)[0]) for c in labels.unique().tolist()[:n]]
    return torch.tensor(sorted(firsts), dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# stages


def _train_classifier(ctx: _Context, name: str, epochs: int, seed: int, file: Path) -> tuple[nn.Module, dict]:
    """A classifier on plain images, as ψ in the paper: SGD 0.1/0.9/5e-4, batch 128, LR x0.2
    at 30/60/80 % of training, ImageNet normalisation, crop + flip, no label smoothing; saved to
    `file`. The final weights are kept (the paper keeps the best validation loss; after the
    schedule's last LR drop the two are close)."""
    cfg, data = ctx.cfg, ctx.data
    model = create_model(name, num_classes=data.train.num_classes, in_channels=data.train.images.shape[1])
    if ctx.done(file):
        saved = _load(file)
        model.load_state_dict(saved["state_dict"])
        return model.to(cfg.device).eval(), saved["info"]
    checkpoints = file.with_suffix(".ckpt")
    loader = DeviceLoader(data.fit, cfg.batch_size, device=cfg.device, shuffle=True, augment=True, seed=seed,
                          ranks=ctx.ranks)
    result = train(model, ctx.normalize, loader, epochs=epochs, lr=cfg.lr, momentum=0.9, weight_decay=5e-4,
                   nesterov=False, label_smoothing=0.0, schedule="step", device=cfg.device,
                   checkpoint_dir=checkpoints, resume=True, seed=seed, deadline=ctx.deadline,
                   progress=cfg.progress, log=ctx.log)
    model.eval()
    info = {"name": name, "epochs": epochs, "seed": seed, "parameters": count_parameters(model),
            "train_loss": result.loss, "train_accuracy": result.accuracy,
            "val_accuracy": _accuracy(model, ctx, data.val.images, data.val.labels),
            "seconds": sum(result.seconds)}  # training time over all calls (a run may resume)
    ctx.on_main(lambda: (ckpt.write(file, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                           "info": info}),
                         shutil.rmtree(checkpoints, ignore_errors=True)))
    return model, info


def feature_stage(ctx: _Context) -> FeatureExtractor:
    cfg = ctx.cfg
    weights = find_vgg16_weights(cfg.vgg_weights)  # an explicit path that is missing is an error
    if weights is not None:
        return vgg16_relu2_2(weights).to(cfg.device)
    model, info = _train_classifier(ctx, cfg.feature_model, cfg.epochs_features, cfg.seed + 1,
                                    ctx.out / "features" / f"{cfg.feature_model}.pt")
    description = (f"fallback (no ImageNet VGG-16 weights on disk): early layers, up to ReLU {FEATURE_RELUS} "
                   f"(relu2_2 depth), of a CIFAR {cfg.feature_model} trained separately on plain images "
                   f"({info['epochs']} epochs, seed {info['seed']}, validation accuracy {info['val_accuracy']:.2%})")
    return early_layers(model, FEATURE_RELUS, description).to(cfg.device)


def classifier_stage(ctx: _Context, name: str) -> tuple[nn.Module, dict]:
    model, info = _train_classifier(ctx, name, ctx.cfg.epochs_classifier, ctx.cfg.seed,
                                    ctx.out / "classifiers" / f"{name}.pt")
    return model, info


def transform_stage(ctx: _Context, classifier: nn.Module, features: FeatureExtractor, name: str,
                    lam: float) -> tuple[nn.Module, dict]:
    cfg = ctx.cfg
    key = run_key(name, lam)
    file = ctx.out / "transforms" / f"{key}.pt"
    h = UNet(width=cfg.width)
    if ctx.done(file):
        saved = _load(file)
        h.load_state_dict(saved["state_dict"])
        return h.to(cfg.device).eval(), saved["info"]
    loss = TransformLoss(classifier, features, ctx.normalize, lam)
    checkpoint = file.with_suffix(".ckpt")
    result = train_transform(h, loss, ctx.data.fit, ctx.data.val, epochs=cfg.epochs_transform, device=cfg.device,
                             batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, checkpoint=checkpoint,
                             checkpoint_every=CHECKPOINT_EVERY, deadline=ctx.deadline,
                             progress=cfg.progress, log=ctx.log, desc=f"h_θ {key}")
    info = {"classifier": name, "lam": lam, "epochs": cfg.epochs_transform, "width": cfg.width,
            "parameters": count_parameters(h), "history": result.history, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "seconds": sum(row["seconds"] for row in result.history)}
    ctx.on_main(lambda: (ckpt.write(file, {"state_dict": {k: v.cpu() for k, v in h.state_dict().items()},
                                           "config": h.config(), "info": info}),
                         checkpoint.unlink(missing_ok=True)))
    return h, info


def eval_stage(ctx: _Context, classifier: nn.Module, h: nn.Module, name: str, lam: float) -> dict:
    """Accuracy plain / protected float / protected PNG, and SSIM/PSNR of the PNGs against x."""
    cfg, test = ctx.cfg, ctx.data.test
    key = run_key(name, lam)
    file = ctx.out / "eval" / f"{key}.pt"
    if file.exists():
        return _load(file)
    began = time.perf_counter()
    protected = protect_all(h, test.images, cfg.device)
    export_root = ctx.out / "export" / key
    if not (export_root / "test").exists():
        export_png(ImageSet(quantize(protected), test.labels, test.classes), export_root, "test", progress=cfg.progress)
    reloaded = load_png(export_root, "test")
    if not torch.equal(reloaded.images, quantize(protected)) or not torch.equal(reloaded.labels, test.labels):
        raise DataError(f"{export_root}/test does not hold this run's protected test images; remove it to export again")
    per_image = image_metrics(reloaded.images, test.images)
    result = {
        "classifier": name, "lam": lam,
        "accuracy": {"plain": _accuracy(classifier, ctx, test.images, test.labels),
                     "protected_float": _accuracy(classifier, ctx, protected, test.labels),
                     "protected_png": _accuracy(classifier, ctx, reloaded.images, test.labels)},
        "per_image": per_image,
        "metrics": {k: summary(v) for k, v in per_image.items()},
        "grid": reloaded.images[grid_indices(test.labels)].clone(),
        "seconds": time.perf_counter() - began,
    }
    ckpt.write(file, result)
    return result


def attack_stage(ctx: _Context, h: nn.Module, key: str, attack: str) -> dict:
    cfg, data = ctx.cfg, ctx.data
    file = ctx.out / "attacks" / f"{key}-{attack}.pt"
    if ctx.done(file):
        return _load(file)
    # The attacker holds h_θ (clients do), so protects its own plain images; the 8-bit values
    # are exactly those of the PNGs a client would send (the export round trip is exact).
    protected_train = ImageSet(quantize(protect_all(h, data.train.images, cfg.device)), data.train.labels,
                               data.train.classes)
    protected_test = load_png(ctx.out / "export" / key, "test").images
    common = dict(device=cfg.device, seed=cfg.seed, deadline=ctx.deadline, progress=cfg.progress, log=ctx.log,
                  checkpoint=file.with_suffix(".ckpt"), checkpoint_every=CHECKPOINT_EVERY)
    if attack == "itn":
        result, _ = inverse_network_attack(protected_train, data.train, protected_test, data.test.images,
                                           epochs=cfg.epochs_attack, width=cfg.width, batch_size=cfg.batch_size,
                                           lr=cfg.lr, **common)
        label = f"ITN attack (paired, U-Net width {cfg.width:g}, {cfg.epochs_attack} epochs)"
    elif attack == "gan":
        result, _ = gan_attack(protected_train, data.train, protected_test, data.test.images,
                               epochs=cfg.epochs_gan, width=cfg.gan_width, **common)
        label = f"GAN attack (unpaired, U-Net width {cfg.gan_width:g}, {cfg.epochs_gan} epochs)"
    else:
        raise ConfigError(f"unknown attack {attack!r}; expected 'itn' or 'gan'")
    out = _attack_record(result, label, grid_indices(data.test.labels))
    ctx.on_main(lambda: (ckpt.write(file, out), file.with_suffix(".ckpt").unlink(missing_ok=True)))
    return out


def _attack_record(result: AttackResult, label: str, grid: torch.Tensor) -> dict:
    return {"name": result.name, "label": label, "per_image": result.per_image, "metrics": result.metrics(),
            "history": result.history, "grid": result.restored[grid].clone(),
            "seconds": sum(row["seconds"] for row in result.history)}  # training time over all calls


# ---------------------------------------------------------------------------------------------
# the pipeline


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the experiment; returns the results written to `out/results.json`."""
    resolve_device(cfg.device)  # a device this torch cannot use fails before anything is written
    ranks = Ranks.current()
    if not ranks.is_main:  # rank 0 speaks for the job
        log, cfg = (lambda _: None), replace(cfg, progress=False)
    out = Path(cfg.out)
    runs = cfg.runs()
    ranks.from_main(lambda: (out.mkdir(parents=True, exist_ok=True), _check_config(out, cfg)))
    deadline = Deadline.after(cfg.time_limit)
    began = time.perf_counter()
    data = ranks.main_first(lambda: _load_data(cfg))  # rank 0 downloads or decodes, the others read its cache
    log(f"data: {data.description}")
    ctx = _Context(cfg, out, data, Normalize(IMAGENET.mean, IMAGENET.std).to(cfg.device), deadline, log, ranks)
    features = feature_stage(ctx)
    log(f"feature extractor F: {features.describe()}")

    classifiers: dict[str, tuple[nn.Module, dict]] = {}
    for name in dict.fromkeys(c for c, _ in runs):
        classifiers[name] = classifier_stage(ctx, name)
        log(f"ψ {name}: validation accuracy {classifiers[name][1]['val_accuracy']:.2%}")

    transforms, evals = {}, {}
    for name, lam in runs:
        key = run_key(name, lam)
        transforms[key] = transform_stage(ctx, classifiers[name][0], features, name, lam)
        evals[key] = ctx.on_main(lambda: eval_stage(ctx, classifiers[name][0], transforms[key][0], name, lam))
        acc = evals[key]["accuracy"]
        log(f"{key}: accuracy plain {acc['plain']:.2%}, protected {acc['protected_png']:.2%} (PNG); "
            f"SSIM(x', x) {evals[key]['metrics']['ssim']['mean']:.3f}")

    main_key = run_key(*runs[0])
    attacks = {}
    for attack in ("itn", "gan"):
        attacks[attack] = attack_stage(ctx, transforms[main_key][0], main_key, attack)
        log(f"{attacks[attack]['label']}: SSIM {attacks[attack]['metrics']['ssim']['mean']:.3f}")

    blur = image_metrics(blur3(data.test.images), data.test.images)
    results = _results(ctx, features, classifiers, transforms, evals, attacks, blur, main_key)
    results["seconds_this_call"] = time.perf_counter() - began
    ctx.on_main(lambda: _report(ctx, results, evals, attacks, blur, main_key))
    log(f"wrote {out}/results.md, results.json, grid.png, ssim_box.png, psnr_box.png")
    return results


def _results(ctx: _Context, features: FeatureExtractor, classifiers: dict, transforms: dict, evals: dict,
             attacks: dict, blur: dict, main_key: str) -> dict[str, Any]:
    cfg = ctx.cfg
    return {
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "device": f"{cfg.device} ({device_name(cfg.device)}), torch {torch.__version__}",
        "data": ctx.data.description,
        "feature_extractor": features.describe(),
        "ssim": f"torchmetrics structural_similarity_index_measure, {SSIM_WINDOW}x{SSIM_WINDOW} uniform window, "
                "data_range 1, on 8-bit images; PSNR: torchmetrics peak_signal_noise_ratio, per image",
        "classifiers": {k: {kk: v for kk, v in info.items() if kk not in ("train_loss", "train_accuracy")}
                        for k, (_, info) in classifiers.items()},
        "runs": {k: {"classifier": e["classifier"], "lam": e["lam"], "accuracy": e["accuracy"], "metrics": e["metrics"],
                     "best_epoch": transforms[k][1]["best_epoch"], "epochs": transforms[k][1]["epochs"],
                     "final_val": transforms[k][1]["history"][-1] if transforms[k][1]["history"] else None,
                     "train_seconds": transforms[k][1]["seconds"]}
                 for k, e in evals.items()},
        "attacks": {k: {"target": main_key, "label": a["label"], "metrics": a["metrics"], "seconds": a["seconds"]}
                    for k, a in attacks.items()},
        "blur_reference": {k: summary(v) for k, v in blur.items()},
    }


def _fmt(m: dict[str, float], digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} / {m['median']:.{digits}f}"


def format_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        "# Image to perturbation (Ito et al., IEEE Access 2021): kpfast results", "",
        f"- data: {results['data']}",
        f"- device: {results['device']}",
        f"- feature extractor F: {results['feature_extractor']}",
        f"- epochs (paper: 200 each): ψ {cfg['epochs_classifier']}, h_θ {cfg['epochs_transform']}, "
        f"ITN {cfg['epochs_attack']}, GAN {cfg['epochs_gan']}; F fallback {cfg['epochs_features']} if used; "
        f"U-Net width {cfg['width']:g} (h_θ, ITN), GAN generator width {cfg['gan_width']:g}",
        f"- SSIM: {results['ssim']}",
        "- accuracy: top-1 of the plain-trained ψ; 'PNG' = the protected images saved as 8-bit PNG and reloaded",
        "",
        f"## Accuracy, plain vs protected (λ = {cfg['lam']:g})", "",
    ]
    runs = results["runs"]
    lines += markdown_table(
        ["classifier", "plain", "protected (float)", "protected (PNG)", "SSIM(x', x) mean / median",
         "PSNR(x', x) dB mean / median"],
        ([r["classifier"], f"{r['accuracy']['plain']:.2%}", f"{r['accuracy']['protected_float']:.2%}",
          f"{r['accuracy']['protected_png']:.2%}", _fmt(r["metrics"]["ssim"]), _fmt(r["metrics"]["psnr"], 2)]
         for r in runs.values() if r["lam"] == cfg["lam"]))
    blur = results["blur_reference"]
    lines += ["", f"Reference: a mild 3x3 box blur of x has SSIM {_fmt(blur['ssim'])} and PSNR {_fmt(blur['psnr'], 2)} dB "
              "(mean / median).", ""]
    first = cfg["classifiers"][0]
    sweep = sorted((r for r in runs.values() if r["classifier"] == first), key=lambda r: r["lam"])
    lines += [f"## λ trade-off ({first})", ""]
    lines += markdown_table(
        ["λ", "accuracy protected (PNG)", "SSIM(x', x) mean / median", "PSNR(x', x) dB mean / median", "val CE",
         "val feature distance", "best epoch"],
        ([f"{r['lam']:g}", f"{r['accuracy']['protected_png']:.2%}", _fmt(r["metrics"]["ssim"]),
          _fmt(r["metrics"]["psnr"], 2), f"{(r['final_val'] or {}).get('val_ce', float('nan')):.3f}",
          f"{(r['final_val'] or {}).get('val_feat', float('nan')):.3g}", f"{r['best_epoch']}/{r['epochs']}"]
         for r in sweep))
    main = next(iter(results["attacks"].values()))["target"] if results["attacks"] else None
    if main:
        r = runs[main]
        lines += ["", f"## Attacks on the protected test images ({main})", ""]
        lines += markdown_table(
            ["images compared with plain x", "SSIM mean / median", "PSNR dB mean / median"],
            [["protected x' (no attack)", _fmt(r["metrics"]["ssim"]), _fmt(r["metrics"]["psnr"], 2)],
             *([a["label"], _fmt(a["metrics"]["ssim"]), _fmt(a["metrics"]["psnr"], 2)] for a in results["attacks"].values()),
             ["3x3 box blur of x (reference)", _fmt(blur["ssim"]), _fmt(blur["psnr"], 2)]])
    lines += ["", "## Training time (seconds, summed over calls)", ""]
    lines += markdown_table(["stage", "seconds"], [
        *([f"ψ {name}", f"{info['seconds']:.0f}"] for name, info in results["classifiers"].items()),
        *([f"h_θ {key}", f"{r['train_seconds']:.0f}"] for key, r in runs.items()),
        *([a["label"], f"{a['seconds']:.0f}"] for a in results["attacks"].values())])
    lines += ["", "Pictures: grid.png (plain | protected | restored), ssim_box.png and psnr_box.png "
              "(per-image values over the test set).", ""]
    return "\n".join(lines)


def _report(ctx: _Context, results: dict, evals: dict, attacks: dict, blur: dict, main_key: str) -> None:
    out = ctx.out
    write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    write_text(out / "results.md", format_markdown(results))
    columns, titles = [ctx.data.test.images[grid_indices(ctx.data.test.labels)]], ["plain"]
    for key, e in evals.items():
        columns.append(e["grid"])
        titles.append(key.replace("-lam", " lam "))  # ASCII: PIL's default font has no λ
    for a in attacks.values():
        columns.append(a["grid"])
        titles.append(a["name"])
    save_grid(out / "grid.png", columns, titles, scale=4)
    for metric, ylabel in (("ssim", "SSIM with plain x"), ("psnr", "PSNR with plain x (dB)")):
        values = {"protected": evals[main_key]["per_image"][metric]}
        values.update({a["name"]: a["per_image"][metric] for a in attacks.values()})
        values["3x3 blur"] = blur[metric]
        box_plot(out / f"{metric}_box.png", values, ylabel, f"{main_key}: test images")
