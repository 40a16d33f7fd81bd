"""Bad input gets a clear error that names the problem, never a crash or a wrong result."""
import pytest
import torch

import kpfast
from kpfast import ops

KEYS = kpfast.KeySet.generate(4)
X = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)


def lut_args(**change):
    L = 48
    args = dict(x=X, src=torch.randperm(L).unsqueeze(0), table_id=torch.zeros(1, L, dtype=torch.long),
                tables=torch.rand(1, 256), block_size=4, qscale=255.0, rounding="floor", key_index=None)
    args.update(change)
    return args


def affine_args(**change):
    L = 48
    params = torch.ones(1, 4, L, dtype=torch.float64)
    args = dict(x=X.float(), src=torch.randperm(L).unsqueeze(0), params=params, block_size=4, key_index=None)
    args.update(change)
    return args


@pytest.mark.parametrize("x, error, match", [
    (X.int(), TypeError, "uint8 or floating point"),
    (X[:, :, :6], ValueError, "not divisible by the block size 4"),
    (X[:, :1], ValueError, "1 channels but the key was made for 3"),
    (X.unsqueeze(0), ValueError, r"\[N, C, H, W\]"),
    ([[1, 2]], TypeError, "expected a tensor"),
    (torch.empty(1, 3, 8, 8, dtype=torch.uint8, device="meta"), ValueError, "call .to"),
])
def test_transform_rejects_bad_images(x, error, match):
    with pytest.raises(error, match=match):
        kpfast.BlockTransform(KEYS)(x)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ops=("shuffle", "rotate")), ValueError, "unknown transform 'rotate'"),
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(dtype=torch.int32), ValueError, "dtype"),
    (dict(mean=(0.5,) * 3), ValueError, "both mean and std"),
    (dict(mean=(0.5,) * 2, std=(0.2,) * 2), ValueError, "3 values"),
    (dict(mean=(0.5,) * 3, std=(0.2, 0.0, 0.2)), ValueError, "positive"),
])
def test_transform_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        kpfast.BlockTransform(KEYS, **kwargs)


def test_transform_rejects_bad_keys():
    with pytest.raises(TypeError, match="KeySet"):
        kpfast.BlockTransform([])
    with pytest.raises(TypeError, match="KeySet"):
        kpfast.BlockTransform("secret")
    with pytest.raises(ValueError, match="same block size"):
        kpfast.BlockTransform([KEYS, kpfast.KeySet.generate(2)])
    with pytest.raises(ValueError, match="key_index"):
        kpfast.BlockTransform([KEYS, KEYS])(X)


@pytest.mark.parametrize("change, match", [
    (dict(src=torch.randperm(27).unsqueeze(0)), r"src must have shape \[K, 48\]"),
    (dict(src=torch.randperm(48).unsqueeze(0).int()), "src must be int64"),
    (dict(src=torch.full((1, 48), 48)), r"block positions in \[0, 48\)"),
    (dict(src=torch.full((1, 48), -1)), r"block positions in \[0, 48\)"),
    (dict(table_id=torch.full((1, 48), 1)), r"table_id must be in \[0, 1\)"),
    (dict(table_id=torch.zeros(2, 48, dtype=torch.long)), "table_id must have shape"),
    (dict(tables=torch.rand(1, 100)), "256-entry tables"),
    (dict(tables=torch.randint(0, 9, (1, 256))), "floating point"),
    (dict(rounding="up"), "rounding must be"),
    (dict(block_size=3), "divisible by the block size 3"),
    (dict(block_size=0), "block_size must be >= 1"),
    (dict(key_index=torch.tensor([0, 1])), r"key_index\[1\] = 1 is out of range"),
    (dict(key_index=torch.tensor([0])), "key_index must have shape"),
    (dict(x=X[0]), "4 dims"),
    (dict(x=X.int()), "uint8 or floating point"),
])
def test_block_lut_rejects_bad_arguments(change, match):
    with pytest.raises(RuntimeError, match=match):
        ops.block_lut(**lut_args(**change))


@pytest.mark.parametrize("change, match", [
    (dict(x=X), "floating point images"),
    (dict(params=torch.ones(1, 3, 48, dtype=torch.float64)), "params must have shape"),
    (dict(params=torch.ones(1, 4, 48)), "params must be float64"),
    (dict(src=torch.stack([torch.randperm(48)] * 2), params=torch.ones(2, 4, 48, dtype=torch.float64)),
     "no key_index"),
])
def test_block_affine_rejects_bad_arguments(change, match):
    with pytest.raises(RuntimeError, match=match):
        ops.block_affine(**affine_args(**change))


def test_keys_on_another_device_are_named():
    with pytest.raises(RuntimeError, match="src is on meta but the images are on cpu"):
        ops.block_lut(**lut_args(src=torch.empty(1, 48, dtype=torch.long, device="meta")))
