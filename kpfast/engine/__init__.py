"""The training engine every kpfast track runs on: one resumable fit loop (:func:`fit`), its
checkpoint format, the deadline, the mixed-precision and device policies, rank awareness and
data-parallel training under torchrun (:mod:`kpfast.engine.distributed`), LR schedules, and
classifier training and evaluation on top of the loop.

Needs torch and numpy only (progress bars appear when tqdm is installed).
"""
from .amp import Amp, amp_enabled, autocast
from .classifier import DEFAULTS, Recipe, TrainResult, evaluate, train
from .deadline import Deadline
from .device import default_device, device_name, resolve_device
from .loop import FitResult, eval_mode, fit
from .ranks import Ranks
from .schedule import SCHEDULES, lr_at, scheduler

__all__ = ["Amp", "DEFAULTS", "Deadline", "FitResult", "Ranks", "Recipe", "SCHEDULES", "TrainResult", "amp_enabled",
           "autocast", "default_device", "device_name", "eval_mode", "evaluate", "fit", "lr_at", "resolve_device",
           "scheduler", "train"]
