"""kpfast: fast key-based block-wise image transforms (shuffle, negative/positive, FFX) for
privacy-preserving deep learning and model protection, as PyTorch ops (CPU and CUDA).

``import kpfast`` loads the core alone (keys, the two ops, the transforms and their functional
forms), which needs torch and numpy only. The research tracks live in subpackages:
:mod:`kpfast.engine` (training), :mod:`kpfast.protection` (key-protected models; its
``ProtectedModel`` is also ``kpfast.ProtectedModel``, loaded on first use), :mod:`kpfast.i2p`
(image to perturbation), with :mod:`kpfast.data`, :mod:`kpfast.models` and :mod:`kpfast.report`.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from . import ops  # noqa: F401  (fake kernels and autograd of torch.ops.kpfast.*)
from . import functional
from .errors import KeyFileError, KeyMismatchError, KpfastError
from .keys import KeySet
from .transforms import FFX, BlockTransform, NegPos, Shuffle

__version__ = "0.2.0"


def build_info() -> dict:
    """How this build was made: CUDA kernels or not, CUDA architectures, torch version."""
    return dict(_C.build_info())


def __getattr__(name: str):
    if name == "ProtectedModel":  # the protection track, imported when first asked for
        from .protection.model import ProtectedModel
        return ProtectedModel
    raise AttributeError(f"module 'kpfast' has no attribute {name!r}")


__all__ = ["BlockTransform", "FFX", "KeyFileError", "KeyMismatchError", "KeySet", "KpfastError", "NegPos",
           "ProtectedModel", "Shuffle", "build_info", "functional"]
