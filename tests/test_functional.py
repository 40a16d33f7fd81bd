"""kpfast.functional: the same results as the modules and the numpy reference, with key sets or a
compiled Program, compiled once per (keys, chain, options), never building a module."""
import itertools

import pytest
import torch

import kpfast
import reference as ref
from kpfast import functional as F
from kpfast import plan

CHAINS = [("shuffle",), ("negpos",), ("ffx",), ("shuffle", "negpos", "ffx"), ("ffx", "shuffle", "negpos")]
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def generator():
    return torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))


def images(n, dtype, g, c=3, size=8):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return torch.rand(n, c, size, size, generator=g)


@pytest.fixture(autouse=True)
def fresh_cache():
    F._cached_program.cache_clear()
    yield
    F._cached_program.cache_clear()


@pytest.fixture
def no_modules(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a module was built")

    monkeypatch.setattr(kpfast.BlockTransform, "__init__", refuse)


@pytest.mark.parametrize("ops", CHAINS, ids="+".join)
def test_functions_equal_the_reference_and_build_no_module(ops, no_modules):
    g = generator()
    keys = kpfast.KeySet.generate(4, rng=g)
    for dtype, norm in itertools.product((torch.uint8, torch.float32), ({}, CIFAR)):
        x = images(3, dtype, g)
        want = torch.from_numpy(ref.transform(x.numpy(), keys, ops, rounding="nearest", **norm))
        assert torch.equal(F.block_transform(x, keys, ops, rounding="nearest", **norm), want)
        assert torch.equal(F.block_transform(x[0], keys, ops, rounding="nearest", **norm), want[0])  # CHW
        y = F.block_transform(x, keys, ops, rounding="nearest")
        back = F.block_transform(y, keys, ops, inverse=True)
        assert torch.equal(back, torch.from_numpy(ref.inverse(y.numpy(), keys, ops)))
    x = images(2, torch.float32, g)
    one = dict(shuffle=F.shuffle, negpos=F.negpos, ffx=F.ffx)
    if len(ops) == 1:
        assert torch.equal(one[ops[0]](x, keys), torch.from_numpy(ref.transform(x.numpy(), keys, ops)))


def test_functions_equal_the_modules():
    g = generator()
    keys = kpfast.KeySet.generate(4, rng=g)
    x = images(2, torch.float32, g)
    assert torch.equal(F.shuffle(x, keys), kpfast.Shuffle(keys)(x))
    assert torch.equal(F.negpos(x, keys), kpfast.NegPos(keys)(x))
    assert torch.equal(F.ffx(x, keys, rounding="nearest"), kpfast.FFX(keys, rounding="nearest")(x))
    assert torch.equal(F.shuffle(F.shuffle(x, keys), keys, inverse=True), x)
    xs = images(2, torch.uint8, g)
    assert torch.equal(F.block_transform(xs, keys, dtype=torch.bfloat16, **CIFAR),
                       kpfast.BlockTransform(keys, dtype=torch.bfloat16, **CIFAR)(xs))


def test_many_keys_with_key_index():
    g = generator()
    keys = kpfast.KeySet.generate_many(3, 2, rng=g)
    x = images(5, torch.uint8, g, size=4)
    key_index = torch.randint(0, 3, (5,), generator=g)
    out = F.block_transform(x, keys, key_index=key_index)
    for n, k in enumerate(key_index.tolist()):
        assert torch.equal(out[n], kpfast.BlockTransform(keys[k])(x[n]))
    with pytest.raises(ValueError, match="pass key_index"):
        F.block_transform(x, keys)


def test_compiled_once_per_keys_and_options(monkeypatch):
    calls = []
    real = plan.compile
    monkeypatch.setattr(plan, "compile", lambda *a, **k: calls.append(k) or real(*a, **k))
    g = generator()
    keys = kpfast.KeySet.generate(4, rng=g)
    x = images(2, torch.uint8, g)
    for _ in range(100):
        F.ffx(x, keys)
    assert len(calls) == 1
    F.ffx(x.float() / 255, keys)
    F.ffx(x, keys, rounding="nearest")
    F.ffx(x, kpfast.KeySet.from_seed(1, 4))
    for _ in range(10):
        F.ffx(x, keys)
    assert len(calls) == 4
    assert F._cached_program.cache_info().maxsize == F.PROGRAM_CACHE_SIZE


def test_a_program_is_run_as_compiled(no_modules):
    g = generator()
    keys = kpfast.KeySet.generate(4, rng=g)
    x = images(3, torch.uint8, g)
    program = plan.compile(keys, ("ffx",), integer_input=True, **CIFAR)
    want = torch.from_numpy(ref.transform(x.numpy(), keys, ("ffx",), **CIFAR))
    assert torch.equal(F.ffx(x, program), want)
    assert torch.equal(F.block_transform(x, program), want)
    plain = plan.compile(keys, ("ffx",), integer_input=True)
    inverse = plan.compile(keys, ("ffx",), integer_input=False, inverse=True)
    y = F.ffx(x, plain)
    assert torch.equal(F.ffx(y, inverse, inverse=True), torch.from_numpy(ref.inverse(y.numpy(), keys, ("ffx",))))
    assert torch.equal(torch.round(F.ffx(y, inverse, inverse=True) * 255).to(torch.uint8), x)


def test_program_from_a_module_serves_the_functions():
    g = generator()
    t = kpfast.BlockTransform(kpfast.KeySet.generate(2, rng=g), **CIFAR)
    x = images(2, torch.float32, g, size=4)
    assert torch.equal(F.block_transform(x, t.program(integer_input=False)), t(x))


@pytest.mark.parametrize("call, message", [
    (lambda x, p: F.shuffle(x, p), r"computes \('ffx',\), not \('shuffle',\)"),
    (lambda x, p: F.ffx(x, p, rounding="nearest"), "rounding are fixed when a Program is compiled"),
    (lambda x, p: F.block_transform(x, p, mean=(0.5,) * 3, std=(0.2,) * 3), "mean, std are fixed"),
    (lambda x, p: F.ffx(x, p, inverse=True), "compiled with inverse=False"),
    (lambda x, p: F.ffx(x.float(), p), "compiled for uint8 images, got torch.float32"),
    (lambda x, p: F.ffx(x, p.to("meta")), r"program is on meta; call .to\('cpu'\) on the program"),
    (lambda x, p: F.ffx(x[:, :1], p), "1 channels but the key was made for 3"),
])
def test_misused_programs_are_named(call, message):
    keys = kpfast.KeySet.generate(2)
    program = plan.compile(keys, ("ffx",), integer_input=True)
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), program)


def test_bad_arguments_with_keys():
    keys = kpfast.KeySet.generate(2)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(TypeError, match="expected a tensor"):
        F.shuffle([[0.0]], keys)
    with pytest.raises(TypeError, match="KeySet"):
        F.shuffle(x, "secret")
    with pytest.raises(ValueError, match="not divisible by the block size 2"):
        F.shuffle(x[..., :3], keys)
    with pytest.raises(ValueError, match="unknown transform"):
        F.block_transform(x, keys, ("rotate",))


def test_straight_through_gradient():
    keys = kpfast.KeySet.generate(2)
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    F.block_transform(x, keys, ("ffx", "shuffle"), straight_through=True).mul(torch.arange(48.).view(1, 3, 4, 4)).sum().backward()
    assert torch.equal(x.grad, kpfast.Shuffle(keys).inverse(torch.arange(48.).view(1, 3, 4, 4)))


def test_scramble_with_keys_or_a_program(no_modules):
    g = generator()
    keys = kpfast.KeySet.generate(2, rng=g, grid=(4, 4))
    x = images(3, torch.uint8, g)
    want = torch.from_numpy(ref.transform(x.numpy(), keys, ("scramble",)))
    assert torch.equal(F.scramble(x, keys), want)
    assert torch.equal(F.scramble(F.scramble(x.float() / 255, keys), keys, inverse=True), x.float() / 255)
    program = plan.compile(keys, ("negpos", "scramble"), integer_input=True)
    want = torch.from_numpy(ref.transform(x.numpy(), keys, ("negpos", "scramble")))
    assert torch.equal(F.block_transform(x, program), want)
    # a Program knows how many block locations it scrambles: images with another number are refused
    with pytest.raises(ValueError, match="scrambles 16 block locations, but images of 4x4 pixels have 4 blocks"):
        F.block_transform(x[..., :4, :4], program)
    with pytest.raises(ValueError, match="make a 2x2 grid of 2x2 blocks, but the block-scrambling key"):
        F.scramble(x[..., :4, :4], keys)


def test_the_default_chain_is_the_three_in_block_transforms():
    keys = kpfast.KeySet.generate(2, grid=(4, 4))
    x = images(1, torch.uint8, generator())
    assert torch.equal(F.block_transform(x, keys), F.block_transform(x, keys, plan.IN_BLOCK_TRANSFORMS))
