"""Which device a run uses, checked up front, and how the device is named in results."""
from __future__ import annotations

import platform

import torch
from torch import nn

from ..errors import DeviceError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a DeviceError that says why it cannot be used (kpfast's
    ops run on CPU and CUDA)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(f"{device!r} is not a device name ({e}); use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if torch.version.cuda is None:
            raise DeviceError(f"device {str(device)!r} is not available: this torch ({torch.__version__}) was "
                              "built without CUDA; install a CUDA build of torch, or use the CPU (device 'cpu')")
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} is not available: torch sees no CUDA GPU (check the "
                              "driver and CUDA_VISIBLE_DEVICES), or use the CPU (device 'cpu')")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif resolved.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported: kpfast runs on cpu and cuda")
    return resolved


def prefer_channels_last(device: torch.device) -> bool:
    """Whether convolutions on `device` run faster in channels_last (GPUs with tensor cores)."""
    return device.type == "cuda"


def to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` on `device`, in the memory format its convolutions run fastest in there."""
    module.to(device)
    if prefer_channels_last(device):
        module.to(memory_format=torch.channels_last)
    return module


def device_name(device: str | torch.device) -> str:
    """A readable name of the machine that ran: the GPU's name, or the CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"
