"""kpfast: fast key-based block-wise image transforms (shuffle, negative/positive, FFX) for
privacy-preserving deep learning and model protection, as PyTorch ops (CPU and CUDA)."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from . import ops  # noqa: F401  (fake kernels and autograd of torch.ops.kpfast.*)
from . import functional
from .keys import KeyFileError, KeySet
from .protected import KeyMismatchError, ProtectedModel
from .transforms import FFX, BlockTransform, NegPos, Shuffle

__version__ = "0.1.0"


def build_info() -> dict:
    """How this build was made: CUDA kernels or not, CUDA architectures, torch version."""
    return dict(_C.build_info())


__all__ = ["BlockTransform", "FFX", "KeyFileError", "KeyMismatchError", "KeySet", "NegPos",
           "ProtectedModel", "Shuffle", "build_info", "functional"]
