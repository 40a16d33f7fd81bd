"""Model protection with a secret key (AprilPyone & Kiya): a classifier trained on key-transformed
images works with its key and fails without it.

- :mod:`~kpfast.protection.model`: :class:`ProtectedModel`, the deployable model and its file;
- :mod:`~kpfast.protection.evaluate`: :func:`evaluate_protection` (correct key, wrong keys, plain images);
- :mod:`~kpfast.protection.experiment`: one training/evaluation run from a
  :class:`~kpfast.protection.experiment.RunConfig`
  (what ``kpfast train`` and ``kpfast eval`` do);
- :mod:`~kpfast.protection.grid`: the reproduction grid of the paper (``kpfast reproduce``);
- :mod:`~kpfast.protection.attacks`: attacks on protected models.

Training itself runs on :mod:`kpfast.engine` (:func:`kpfast.engine.train`).
"""
from .evaluate import evaluate_plain, evaluate_protection, format_markdown
from .model import KeyMismatchWarning, ProtectedModel, check_fingerprint, transform_from_config

__all__ = ["KeyMismatchWarning", "ProtectedModel", "check_fingerprint", "evaluate_plain", "evaluate_protection",
           "format_markdown", "transform_from_config"]
