"""Image to perturbation (Ito, Kinoshita, AprilPyone, Kiya; IEEE Access 2021): a key-free
transformation network h_θ whose outputs x' = sigmoid(h_θ(x)) look like noise to people but are
still classified by the plain-trained classifier ψ; plus the attacks that try to undo it.

One idea per module: `unet` (h_θ), `loss` (the objective), `features` (the frozen F), `train`
(the paper's training recipe on kpfast.engine), `export` (PNG data sets), `metrics` (SSIM/PSNR),
`attacks` (ITN and GAN), `experiment` (the whole pipeline and its report). Needs the
``kpfast[i2p]`` extra (Pillow, tqdm, matplotlib, torchmetrics).
"""
from .._moved import moved
from ..engine import Deadline
from ..errors import TimeLimitReached
from .attacks import AttackResult, PatchDiscriminator, gan_attack, inverse_network_attack
from .export import export_png, load_png
from .features import FeatureExtractor, early_layers, vgg16_relu2_2
from .loss import LossTerms, TransformLoss, protect, protect_all, quantize
from .metrics import blur3, psnr, ssim
from .train import FitResult, train_net, train_transform
from .unet import UNet, count_parameters

__all__ = [
    "AttackResult", "Deadline", "FeatureExtractor", "FitResult", "LossTerms", "PatchDiscriminator",
    "TimeLimitReached", "TransformLoss", "UNet", "blur3", "count_parameters", "early_layers", "export_png",
    "gan_attack", "inverse_network_attack", "load_png", "protect", "protect_all", "psnr", "quantize", "ssim",
    "train_net", "train_transform", "vgg16_relu2_2",
]

__getattr__ = moved(__name__, {"fit": "kpfast.i2p.train:train_net"})
