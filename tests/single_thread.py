"""Tiny training runs take one thread: extra threads add nothing to them, and on a busy 2-core
machine spinning OpenMP threads made them 5-10x slower (measured: 4.7 s against 0.6 s per epoch)."""
import contextlib

import torch


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
