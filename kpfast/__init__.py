"""kpfast: fast key-based block-wise image transforms (shuffle, negative/positive, FFX) for
privacy-preserving deep learning and model protection, as PyTorch ops (CPU and CUDA).

``import kpfast`` loads the core alone (keys, the two ops, the transforms and their functional
forms), which needs torch and numpy only. The research tracks live in subpackages:
:mod:`kpfast.engine` (training), :mod:`kpfast.protection` (key-protected models; its
``ProtectedModel`` is also ``kpfast.ProtectedModel``, loaded on first use), :mod:`kpfast.i2p`
(image to perturbation), with :mod:`kpfast.data`, :mod:`kpfast.models` and :mod:`kpfast.report`.
"""
import importlib as _importlib
import re as _re

import torch  # loads libtorch before the extension

__version__ = "0.2.0"  # a wheel's version adds the torch it was built against: 0.2.0+pt213cpu

_REBUILD = ("Rebuild kpfast against this torch: pip install --no-build-isolation --force-reinstall --no-deps "
            "kpfast (in a source checkout: . instead of kpfast), or install the kpfast wheel built for torch {}.")


def _torch_abi(version: str, cuda: str | None) -> tuple[str, str]:
    """What kpfast's native library shares with the torch it was compiled against: torch's
    major.minor and its CUDA version."""
    found = _re.match(r"\d+\.\d+", version)
    return (found.group(0) if found else version), cuda or "none"


def _check_torch(built: dict) -> None:
    """An ImportError if the native library was built against another torch than the running one."""
    want = _torch_abi(built["torch_version"], built["cuda_version"])
    have = _torch_abi(str(torch.__version__), torch.version.cuda)
    if want != have:
        raise ImportError(f"kpfast was built against torch {built['torch_version']} (CUDA {want[1]}), but torch "
                          f"{torch.__version__} (CUDA {have[1]}) is running. " + _REBUILD.format(have[0]))


def _not_loaded(error: ImportError) -> ImportError:
    """A clear ImportError for a native library that is missing or does not load."""
    if isinstance(error, ModuleNotFoundError) and error.name == f"{__name__}._C":
        return ImportError("kpfast's native library is not built: in the source checkout, with torch installed, "
                           "run pip install --no-build-isolation -e .")
    from importlib import metadata
    try:
        this = f"kpfast {metadata.version(__name__)}"  # the local version names the torch it was built for
    except metadata.PackageNotFoundError:
        this = "this kpfast"
    return ImportError(f"kpfast's native library does not load with torch {torch.__version__} ({error}); {this} "
                       f"was probably built against another torch. "
                       + _REBUILD.format(_torch_abi(str(torch.__version__), None)[0]))


try:
    _C = _importlib.import_module("._C", __name__)  # unlike `from . import`, tells a missing _C apart
except ImportError as _error:
    raise _not_loaded(_error) from _error
_check_torch(_C.build_info())

from . import functional
from . import ops  # noqa: F401  (fake kernels and autograd of torch.ops.kpfast.*)
from .errors import KeyFileError, KeyMismatchError, KpfastError
from .keys import KeySet
from .transforms import FFX, BlockTransform, NegPos, Scramble, Shuffle


def build_info() -> dict:
    """How this build of the native library was made.

    Returns:
        A dict: ``cuda`` (bool: the CUDA kernels are built in), ``cuda_archs`` (the CUDA
        architectures compiled for, comma-separated, e.g. ``"80,90"``, or ``""``),
        ``cuda_version`` (the CUDA toolkit's, or ``""``) and ``torch_version`` (the torch compiled
        against; ``import kpfast`` refuses another major.minor or CUDA variant).

    Example:
        >>> info = kpfast.build_info()
        >>> sorted(info)
        ['cuda', 'cuda_archs', 'cuda_version', 'torch_version']
        >>> info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
        True
    """
    return dict(_C.build_info())


def __getattr__(name: str):
    if name == "ProtectedModel":  # the protection track, imported when first asked for
        from .protection.model import ProtectedModel
        return ProtectedModel
    raise AttributeError(f"module 'kpfast' has no attribute {name!r}")


__all__ = ["BlockTransform", "FFX", "KeyFileError", "KeyMismatchError", "KeySet", "KpfastError", "NegPos",
           "ProtectedModel", "Scramble", "Shuffle", "build_info", "functional"]
