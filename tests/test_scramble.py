"""Block scrambling (docs/semantics.md §11) against the independent numpy reference
(tests/reference.py) on fresh random inputs: alone and in every chain at every place, uint8 and
float, contiguous and channels_last, many keys in one launch, inverse, gradient, torch.compile,
and the clear errors for keys and images that do not fit."""
import itertools

import pytest
import torch

import kpfast
import reference as ref
from kpfast import BlockTransform, KeySet
from kpfast.errors import ConfigError, DataError
from kpfast.transforms import Scramble

IN_BLOCK = kpfast.plan.IN_BLOCK_TRANSFORMS
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))


def images(n, c, h, w, dtype, g, channels_last=False):
    x = (torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8) if dtype == torch.uint8
         else torch.rand(n, c, h, w, generator=g))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def expected(x, keys, ops, **kw):
    return torch.from_numpy(ref.transform(x.numpy() if x.dtype == torch.uint8 else x.float().numpy(), keys, ops, **kw))


def with_scramble_everywhere(chain):
    """``chain`` with "scramble" inserted at every place."""
    return [chain[:i] + ("scramble",) + chain[i:] for i in range(len(chain) + 1)]


CHAINS = [("scramble",)] + [c for n in (1, 2, 3) for chain in itertools.permutations(IN_BLOCK, n)
                            for c in with_scramble_everywhere(chain)][::3]  # 16 of the 49, all kinds


@pytest.mark.parametrize("M, C, H, W", [(1, 3, 4, 6), (2, 1, 8, 8), (4, 3, 32, 32), (4, 1, 28, 28), (8, 3, 16, 40)])
def test_every_chain_matches_the_reference(M, C, H, W):
    g = generator()
    keys = KeySet.generate(M, C, grid=(H // M, W // M), rng=g)
    for ops in CHAINS:
        t = BlockTransform(keys, ops, rounding="nearest")
        for dtype, cl in itertools.product((torch.uint8, torch.float32), (False, True)):
            x = images(3, C, H, W, dtype, g, cl)
            out = t(x)
            assert torch.equal(out, expected(x, keys, ops, rounding="nearest")), (ops, dtype, cl)
            assert out.is_contiguous(memory_format=torch.channels_last if cl and C > 1 else torch.contiguous_format)


def test_scrambling_moves_whole_blocks():
    # The definition, written out without the reference: block b of the output is block
    # block_perm[b] of the input, row-major over the grid.
    g = generator()
    keys = KeySet.generate(2, 3, grid=(3, 5), rng=g)
    x = images(2, 3, 6, 10, torch.uint8, g)
    out = Scramble(keys)(x)
    for b, source in enumerate(keys.block_perm.tolist()):
        r, c, sr, sc = b // 5, b % 5, source // 5, source % 5
        assert torch.equal(out[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mul(255).round().byte(),
                           x[:, :, 2 * sr:2 * sr + 2, 2 * sc:2 * sc + 2])


@pytest.mark.parametrize("ops", [("scramble",), ("shuffle", "scramble", "negpos"), ("scramble", "ffx", "shuffle")])
def test_normalize_and_the_place_of_scramble(ops):
    g = generator()
    keys = KeySet.generate(4, 3, grid=(4, 6), rng=g)
    x = images(4, 3, 16, 24, torch.uint8, g)
    out = BlockTransform(keys, ops, **CIFAR)(x)
    assert torch.equal(out, expected(x, keys, ops, **CIFAR))
    # wherever it stands, it is the chain without scrambling, then the blocks moved
    in_block = tuple(o for o in ops if o != "scramble")
    if in_block:
        assert torch.equal(Scramble(keys).inverse(out), BlockTransform(keys, in_block, **CIFAR)(x))


def test_inverse_round_trips():
    g = generator()
    keys = KeySet.generate(4, 3, grid=(8, 8), rng=g)
    x = images(5, 3, 32, 32, torch.uint8, g)
    for ops in CHAINS:
        t = BlockTransform(keys, ops, rounding="nearest", **CIFAR)
        assert torch.equal(torch.round(t.inverse(t(x)) * 255).to(torch.uint8), x), ops
    xf = images(5, 3, 32, 32, torch.float32, g)
    assert torch.equal(Scramble(keys).inverse(Scramble(keys)(xf)), xf)
    y = BlockTransform(keys, ("scramble", "negpos"), rounding="nearest")(x)
    assert torch.equal(BlockTransform(keys, ("scramble", "negpos")).inverse(y),
                       torch.from_numpy(ref.inverse(y.numpy(), keys, ("scramble", "negpos"))))


def test_twice_is_the_square_of_the_permutation():
    g = generator()
    keys = KeySet.generate(2, 1, grid=(3, 3), rng=g)
    x = images(2, 1, 6, 6, torch.float32, g)
    twice = BlockTransform(keys, ("scramble", "scramble"))(x)
    assert torch.equal(twice, Scramble(keys)(Scramble(keys)(x)))
    assert torch.equal(BlockTransform(keys, ("scramble", "scramble")).inverse(twice), x)


def test_many_keys_in_one_launch():
    g = generator()
    keys = KeySet.generate_many(4, 4, 3, grid=(4, 4), rng=g)
    ops = ("negpos", "scramble", "shuffle")
    t = BlockTransform(keys, ops, **CIFAR)
    x = images(9, 3, 16, 16, torch.uint8, g)
    key_index = torch.randint(0, 4, (9,), generator=g)
    out = t(x, key_index)
    for n, k in enumerate(key_index.tolist()):
        assert torch.equal(out[n:n + 1], expected(x[n:n + 1], keys[k], ops, **CIFAR))
    assert torch.equal(t(x.float() / 255, key_index), out)
    assert torch.allclose(t.inverse(out, key_index), x.float() / 255, atol=1e-6)


def test_gradient_is_the_inverse_gather():
    g = generator()
    keys = KeySet.generate(2, 3, grid=(4, 4), rng=g)
    x = images(2, 3, 8, 8, torch.float32, g).requires_grad_()
    w = torch.randn(2, 3, 8, 8, generator=g)
    (BlockTransform(keys, ("shuffle", "scramble"))(x) * w).sum().backward()
    assert torch.equal(x.grad, BlockTransform(keys, ("shuffle", "scramble")).inverse(w))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile(backend):
    torch._dynamo.reset()
    g = generator()
    keys = KeySet.generate(4, 3, grid=(4, 4), rng=g)
    t = BlockTransform(keys, ("shuffle", "scramble", "negpos"), rounding="nearest")
    compiled = torch.compile(lambda a, b: (t(a), t(b), t.inverse(t(a))), fullgraph=True, backend=backend)
    x, xf = images(2, 3, 16, 16, torch.uint8, g), images(2, 3, 16, 16, torch.float32, g)
    eager = BlockTransform(keys, ("shuffle", "scramble", "negpos"), rounding="nearest")
    for got, want in zip(compiled(x, xf), (eager(x), eager(xf), eager.inverse(eager(x)))):
        assert torch.equal(got, want)


@pytest.mark.parametrize("ops, dtype", [(("shuffle", "scramble", "negpos"), torch.float32),
                                        (("scramble", "ffx", "shuffle"), torch.uint8),
                                        (("negpos", "ffx", "scramble"), torch.float32)])
def test_opcheck_on_the_launches_of_a_scrambling_chain(ops, dtype):
    # The raw-op calls a scrambling chain makes (its own tables, block_src and key_index; an affine
    # and a table launch for float FFX), through torch.library.opcheck: schema, fake kernel,
    # autograd registration; each launch's output is the next one's input, as in Program.
    g = generator()
    keys = KeySet.generate_many(3, 2, 3, grid=(2, 3), rng=g)
    program = kpfast.plan.compile(keys, ops, integer_input=dtype == torch.uint8, **CIFAR)
    x0 = images(4, 3, 4, 6, dtype, g)
    x = x0.clone().requires_grad_(dtype != torch.uint8)
    key_index = torch.randint(0, 3, (4,), generator=g)
    assert program.launches[0].block_src is not None
    for launch in program.launches:
        if isinstance(launch, kpfast.program.AffineLaunch):
            op, args = torch.ops.kpfast.block_affine.default, (x, launch.src, launch.params, 2, key_index,
                                                                launch.block_src)
        else:
            tables = launch.tables if dtype == torch.uint8 else launch.tables.to(x.dtype)
            op, args = torch.ops.kpfast.block_lut.default, (x.detach(), launch.src, launch.table_id, tables, 2,
                                                             launch.qscale, launch.rounding, key_index,
                                                             launch.block_src)
        torch.library.opcheck(op, args)
        x = op(*args)
    assert torch.equal(x.detach(), program(x0, key_index))


def test_keys_and_images_that_do_not_fit_are_named():
    keys = KeySet.generate(4, 3, grid=(8, 8))
    t = Scramble(keys)
    with pytest.raises(DataError, match=r"images of 28x28 pixels make a 7x7 grid of 4x4 blocks, but the "
                                        r"block-scrambling key was made for a 8x8 grid \(32x32 images\)"):
        t(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(DataError, match="16x64 pixels make a 4x16 grid"):  # as many blocks, another grid
        t(torch.zeros(1, 3, 16, 64, dtype=torch.uint8))
    with pytest.raises(DataError, match="not divisible by the block size 4"):
        t(torch.zeros(1, 3, 30, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match="grid"):
        kpfast.functional.scramble(torch.zeros(1, 3, 28, 28), keys)
    with pytest.raises(ConfigError, match="no block-scrambling key.*grid=\\(H // M, W // M\\)"):
        Scramble(KeySet.generate(4, 3))
    with pytest.raises(ConfigError, match="different grids"):
        BlockTransform([keys, KeySet.generate(4, 3, grid=(4, 4))], ("scramble",))
    BlockTransform(KeySet.generate(4, 3), ("shuffle",))  # no scrambling: no grid needed
