"""Option types shared by the subcommands: values are checked where they are parsed, so a bad one
gets argparse's usage error instead of failing deep inside a run."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def floats(text: str) -> tuple[float, ...]:
    """'0.01,0.1' -> (0.01, 0.1)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def names(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b')."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


AUTO_DEVICE = "auto"
DEVICE_HELP = "cpu, cuda, cuda:N, or auto: cuda when a GPU is available, else cpu (default: %(default)s)"


def device(text: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; any other name is kept as given (the
    run checks it and says why a device cannot be used)."""
    if text.strip().lower() != AUTO_DEVICE:
        return text
    import torch  # only when a command's options are parsed, never for `kpfast --help`

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device(p: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    """--device, default auto (argparse passes the default through `device` too)."""
    p.add_argument("--device", type=device, default=AUTO_DEVICE, help=help)
