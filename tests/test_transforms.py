"""kpfast's transforms against the independent numpy reference (tests/reference.py), on fresh
random inputs: bit for bit in float32."""
import itertools
import warnings

import pytest
import torch

import kpfast
import reference as ref

CHAINS = [("shuffle",), ("negpos",), ("ffx",), ("shuffle", "negpos", "ffx"), ("ffx", "shuffle", "negpos"),
          ("negpos", "ffx", "shuffle")]
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def images(n, c, h, w, dtype, channels_last=False, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(1 << 30, ())))
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        x = torch.rand(n, c, h, w, generator=g, dtype=torch.float32).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def expected(x, keys, ops, **kw):
    return torch.from_numpy(ref.transform(x.float().numpy() if x.dtype != torch.uint8 else x.numpy(), keys, ops, **kw))


@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("C", [1, 3])
def test_every_chain_matches_reference(M, C):
    keys = kpfast.KeySet.generate(M, C)
    size = max(M, 8) * 2 if M < 32 else 32
    for ops in CHAINS:
        t = kpfast.BlockTransform(keys, ops)
        for dtype, cl in itertools.product((torch.uint8, torch.float32), (False, True)):
            x = images(3, C, size, size, dtype, cl)
            out = t(x)
            assert out.dtype == torch.float32
            assert torch.equal(out, expected(x, keys, ops)), (ops, dtype, cl)
            assert out.is_contiguous(memory_format=torch.channels_last if cl and C > 1 else torch.contiguous_format)


@pytest.mark.parametrize("ops", CHAINS)
@pytest.mark.parametrize("rounding", ["floor", "nearest"])
def test_normalize_folded_in(ops, rounding):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, ops, rounding=rounding, **CIFAR)
    for dtype in (torch.uint8, torch.float32):
        x = images(5, 3, 16, 24, dtype)
        assert torch.equal(t(x), expected(x, keys, ops, rounding=rounding, **CIFAR))


def test_uint8_equals_float_of_bytes():
    keys = kpfast.KeySet.generate(4)
    x = images(7, 3, 32, 32, torch.uint8)
    for ops in CHAINS:
        t = kpfast.BlockTransform(keys, ops, **CIFAR)
        assert torch.equal(t(x), t(x.float() / 255))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_dtypes_are_the_float32_result_cast(dtype):
    keys = kpfast.KeySet.generate(4)
    x = images(3, 3, 16, 16, torch.uint8)
    t32 = kpfast.BlockTransform(keys, **CIFAR)
    t = kpfast.BlockTransform(keys, dtype=dtype, **CIFAR)
    out = t(x)
    assert out.dtype == dtype and torch.equal(out, t32(x).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_inputs_of_other_dtypes(dtype):
    keys = kpfast.KeySet.generate(2)
    x = images(2, 3, 8, 8, torch.float32).to(dtype)
    for ops in (("shuffle",), ("negpos",), ("shuffle", "negpos")):
        out = kpfast.BlockTransform(keys, ops)(x)
        assert out.dtype == dtype
        want = torch.from_numpy(ref.transform(x.double().numpy(), keys, ops)) if dtype == torch.float64 \
            else expected(x, keys, ops).to(dtype)
        if dtype == torch.float64:  # computed in double: compare the shuffle exactly, NP to 1 ulp
            torch.testing.assert_close(out, want.double(), rtol=0, atol=1e-7)
        else:
            assert torch.equal(out, want)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_batch_sizes(n):
    keys = kpfast.KeySet.generate(4)
    x = images(n, 3, 8, 8, torch.uint8)
    out = kpfast.BlockTransform(keys)(x)
    assert out.shape == x.shape
    assert torch.equal(out, expected(x, keys, kpfast.plan.IN_BLOCK_TRANSFORMS))


def test_single_image_and_non_contiguous_input():
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys)
    x = images(4, 3, 16, 32, torch.uint8)
    assert torch.equal(t(x[1]), t(x)[1])
    sliced = x[:, :, :, 8:24]  # non-contiguous view
    assert torch.equal(t(sliced), t(sliced.contiguous()))
    transposed = x.transpose(2, 3)
    assert torch.equal(t(transposed), t(transposed.contiguous()))


@pytest.mark.parametrize("ops", CHAINS)
def test_inverse_round_trip_on_bytes(ops):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, ops, rounding="nearest", **CIFAR)
    x = images(6, 3, 16, 16, torch.uint8)
    for y in (t(x), t(x.float() / 255)):
        assert torch.equal(torch.round(t.inverse(y) * 255).to(torch.uint8), x)


def test_inverse_is_exact_for_float_shuffle_and_matches_reference():
    keys = kpfast.KeySet.generate(8)
    x = images(3, 3, 16, 16, torch.float32)
    t = kpfast.Shuffle(keys)
    assert torch.equal(t.inverse(t(x)), x)
    for ops in CHAINS:
        y = kpfast.BlockTransform(keys, ops, rounding="nearest")(x)
        got = kpfast.BlockTransform(keys, ops).inverse(y)
        assert torch.equal(got, torch.from_numpy(ref.inverse(y.numpy(), keys, ops)))


def test_modules_and_functions_agree():
    keys = kpfast.KeySet.generate(4)
    x = images(2, 3, 8, 8, torch.float32)
    F = kpfast.functional
    assert torch.equal(F.shuffle(x, keys), kpfast.Shuffle(keys)(x))
    assert torch.equal(F.negpos(x, keys), kpfast.NegPos(keys)(x))
    assert torch.equal(F.ffx(x, keys, rounding="nearest"), kpfast.FFX(keys, rounding="nearest")(x))
    assert torch.equal(F.shuffle(F.shuffle(x, keys), keys, inverse=True), x)
    assert torch.equal(F.block_transform(x, keys, mean=CIFAR["mean"], std=CIFAR["std"]),
                       kpfast.BlockTransform(keys, **CIFAR)(x))


def test_reference_compatible_keys():
    # from_seed keys reproduce the reference's masks: NP and FFX use the same positions.
    keys = kpfast.KeySet.from_seed(42, 4)
    x = images(2, 3, 8, 8, torch.float32)
    out = kpfast.BlockTransform(keys)(x)
    assert torch.equal(out, expected(x, keys, kpfast.plan.IN_BLOCK_TRANSFORMS))


def test_per_image_keys_in_one_call():
    # Inverting in one call needs one FFX maximum: share the FFX password, vary the rest.
    password = kpfast.KeySet.generate(4).ffx_password
    key_list = [kpfast.KeySet.from_seed(int(s), 4, password=password) for s in torch.randint(1 << 31, (3,))]
    t = kpfast.BlockTransform(key_list, rounding="nearest", **CIFAR)
    x = images(7, 3, 16, 16, torch.uint8)
    key_index = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    out = t(x, key_index)
    for n, k in enumerate(key_index.tolist()):
        assert torch.equal(out[n], kpfast.BlockTransform(key_list[k], rounding="nearest", **CIFAR)(x[n]))
    xf = x.float() / 255
    assert torch.equal(t(xf, key_index), out)
    assert torch.equal(torch.round(t.inverse(out, key_index) * 255).to(torch.uint8), x)


def test_keys_with_different_ffx_maxima_forward_but_do_not_invert_together():
    key_list = [kpfast.KeySet.generate(2) for _ in range(2)]
    while key_list[0].ffx_max == key_list[1].ffx_max:
        key_list[1] = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(key_list)
    x = images(2, 3, 4, 4, torch.uint8)
    out = t(x, torch.tensor([0, 1]))
    assert torch.equal(out[1], kpfast.BlockTransform(key_list[1])(x[1]))
    with pytest.raises(ValueError, match="one BlockTransform per key"):
        t.inverse(out, torch.tensor([0, 1]))


def test_no_key_material_in_state_dict_or_repr():
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, **CIFAR)
    assert len(t.state_dict()) == 0
    text = repr(t)
    assert keys.fingerprint() in text and str(keys.perm.tolist()[:6])[1:-1] not in text


def test_config_round_trip():
    keys = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(keys, ("ffx", "shuffle"), dtype=torch.bfloat16, rounding="nearest", **CIFAR)
    u = kpfast.BlockTransform.from_config(t.config(), keys)
    x = images(2, 3, 8, 8, torch.uint8)
    assert torch.equal(t(x), u(x)) and u.config() == t.config()
    with pytest.raises(ValueError, match="block"):
        kpfast.BlockTransform.from_config(t.config(), kpfast.KeySet.generate(4))


def test_to_device_moves_keys_with_the_module():
    t = kpfast.BlockTransform(kpfast.KeySet.generate(4)).to(torch.float64).to("cpu")
    assert t(images(1, 3, 8, 8, torch.uint8)).dtype == torch.float32


def test_config_round_trip_keeps_straight_through():
    keys = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(keys, ("ffx", "shuffle"), straight_through=True)
    config = t.config()
    assert config["straight_through"] is True
    u = kpfast.BlockTransform.from_config(config, keys)
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    w = torch.randn(1, 3, 4, 4)
    (u(x) * w).sum().backward()  # "not differentiable" before straight_through was kept
    assert torch.equal(x.grad, kpfast.Shuffle(keys).inverse(w))
    old = {k: v for k, v in config.items() if k != "straight_through"}  # configs saved before
    assert kpfast.BlockTransform.from_config(old, keys).straight_through is False


# The last case puts one column at 1.0 first: 1.01 is then past the margin whatever the draw
# (random images alone reach it only when their largest pixel exceeds 0.992).
@pytest.mark.parametrize("make", [lambda x: x * 255, lambda x: x - 0.5,
                                  lambda x: x.index_fill(-1, torch.tensor([0]), 1.0) * 1.01])
def test_float_images_outside_unit_range_warn_once_per_transform(make):
    t = kpfast.BlockTransform(kpfast.KeySet.generate(4))
    x = make(images(2, 3, 8, 8, torch.float32))
    with pytest.warns(UserWarning, match=r"outside \[0, 1\].*divide 0..255 images by 255"):
        t(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t(x)  # once per transform
        kpfast.FFX(t._keys[0]).inverse(x)  # inverse input is not checked (normalised codes)
    with pytest.warns(UserWarning, match="outside"):
        kpfast.BlockTransform(t._keys[0])(x)  # another transform warns again


def test_images_in_unit_range_do_not_warn():
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, **CIFAR)
    x = images(2, 3, 8, 8, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t(x)
        t(x.clamp(0, 1) + 1e-3)  # within half a level: rounding of a round trip
        t(x * 0 - 1e-3)
        t(images(2, 3, 8, 8, torch.uint8))
        t(torch.empty(0, 3, 8, 8))
        t(x.double())
        kpfast.functional.shuffle(x, keys)


def test_range_check_stays_out_of_torch_compile():
    keys = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(keys, ("shuffle", "negpos"))
    compiled = torch.compile(lambda v: t(v), fullgraph=True, backend="eager")
    x = images(1, 3, 4, 4, torch.float32) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compiled(x)
    assert not t._range_warned
    with pytest.warns(UserWarning, match="outside"):
        assert torch.equal(out, kpfast.BlockTransform(keys, ("shuffle", "negpos"))(x))


@pytest.mark.parametrize("ops", CHAINS)
def test_keys_without_password_work_in_every_transform(ops):
    keys = kpfast.KeySet.generate(4)
    tables = kpfast.KeySet.from_tables(keys.perm, keys.np_mask, keys.ffx_mask, keys.ffx_lut, block_size=4)
    x = images(3, 3, 8, 8, torch.uint8)
    a = kpfast.BlockTransform(keys, ops, rounding="nearest", **CIFAR)
    b = kpfast.BlockTransform(tables, ops, rounding="nearest", **CIFAR)
    assert torch.equal(b(x), a(x)) and torch.equal(b(x), expected(x, tables, ops, rounding="nearest", **CIFAR))
    assert torch.equal(b.inverse(b(x)), a.inverse(a(x)))
    assert torch.equal(kpfast.functional.block_transform(x, tables, ops), expected(x, keys, ops))
    assert b.fingerprint() == tables.fingerprint() != keys.fingerprint()
    # an estimated table: any injective codes, e.g. the codes of another password
    other = kpfast.KeySet.generate(4)
    estimate = tables.replace(ffx_lut=other.ffx_lut)
    assert torch.equal(kpfast.FFX(estimate)(x), kpfast.FFX(keys.replace(ffx_password=other.ffx_password))(x))


def test_first_use_compile_is_marked_as_torch_compiler_would_mark_it():
    # transforms.py sets the mark by hand so that `import kpfast` does not load torch._dynamo.
    from kpfast.transforms import _ensure_program

    def probe():
        return True

    marked = torch.compiler.assume_constant_result(probe)
    added = {k: v for k, v in vars(marked).items()}
    assert added and all(getattr(_ensure_program, k, None) == v for k, v in added.items())


def test_import_kpfast_does_not_load_dynamo():
    import subprocess
    import sys
    code = "import sys, kpfast; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_of_a_scrambling_chain_records_the_grid():
    keys = kpfast.KeySet.generate(4, 3, grid=(8, 7))
    t = kpfast.BlockTransform(keys, ("shuffle", "scramble"), **CIFAR)
    config = t.config()
    assert config["grid"] == [8, 7] and config["ops"] == ["shuffle", "scramble"]
    u = kpfast.BlockTransform.from_config(config, keys)
    x = images(2, 3, 32, 28, torch.uint8)
    assert torch.equal(u(x), t(x)) and u.config() == config and u.grid == (8, 7)
    assert "grid=(8, 7)" in repr(t) and str(keys.block_perm.tolist()[:4])[1:-1] not in repr(t)
    assert "grid" not in kpfast.BlockTransform(keys, ("shuffle",)).config()  # other chains: as before
    with pytest.raises(ValueError, match="key scrambles a 4x4 grid of blocks, the transform a 8x7 grid"):
        kpfast.BlockTransform.from_config(config, kpfast.KeySet.generate(4, 3, grid=(4, 4)))
    with pytest.raises(ValueError, match="no block-scrambling key"):
        kpfast.BlockTransform.from_config(config, kpfast.KeySet.generate(4, 3))
    assert len(t.state_dict()) == 0
