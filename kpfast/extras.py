"""Optional dependencies: the core (``import kpfast``) needs torch and numpy only; image files,
progress bars, plots and image metrics come with extras (``pip install 'kpfast[all]'``)."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# module -> (the package pip installs, the smallest kpfast extra that carries it)
EXTRAS = {
    "PIL": ("pillow", "cli"),
    "png": ("pypng", "cli"),
    "tqdm": ("tqdm", "cli"),
    "matplotlib": ("matplotlib", "experiments"),
    "torchmetrics": ("torchmetrics", "i2p"),
}


def require(module: str) -> ModuleType:
    """``import module``, or a MissingExtraError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top or top not in EXTRAS:
            raise  # another module is missing: a broken installation, not an extra
        package, extra = EXTRAS[top]
        raise MissingExtraError(f"this part of kpfast needs {package}, which is not installed: "
                                f"pip install 'kpfast[{extra}]' (or 'kpfast[all]')") from None
