"""The native library reports how it was built, and the ops are registered for the backends it
was built for."""
import torch

import kpfast


def test_build_info():
    info = kpfast.build_info()
    assert set(info) == {"cuda", "cuda_archs", "cuda_version", "torch_version"}
    assert info["torch_version"] == torch.__version__  # built against the torch that runs it
    assert info["cuda"] == (torch.version.cuda is not None and info["cuda"])
    if not info["cuda"]:
        assert info["cuda_archs"] == ""


def test_ops_are_registered():
    for op in ("block_lut", "block_affine"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"kpfast::{op}", "CPU")
        if kpfast.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"kpfast::{op}", "CUDA")
