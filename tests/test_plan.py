"""kpfast.plan.compile and the Programs it returns: many keys in one program against the numpy
reference (tests/reference.py) on fresh random inputs, the number of op launches per chain (the
fusion claim), deduplication and chunking, lazy compilation in the modules, and torch.compile."""
import itertools

import pytest
import torch
import torch._dynamo.testing
from torch.utils._python_dispatch import TorchDispatchMode

import kpfast
import kpfast.keys
import reference as ref
from kpfast import plan
from kpfast.program import AffineLaunch, LutLaunch, Program

OPS = plan.IN_BLOCK_TRANSFORMS
# every chain of distinct in-block transforms: 3 + 6 + 6 orderings
DISTINCT_CHAINS = [c for n in (1, 2, 3) for c in itertools.permutations(OPS, n)]
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def seed() -> int:
    return int(torch.randint(1 << 30, ()))


def images(n, c, h, w, dtype, g):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return torch.rand(n, c, h, w, generator=g)


def reference(x, keys, ops, **kw):
    return torch.from_numpy(ref.transform(x.numpy(), keys, ops, **kw))


class RecordOps(TorchDispatchMode):
    """Every op dispatched inside the block: (qualified name, output)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((func._schema.name, out))
        return out

    def kpfast_ops(self):
        return [name.removeprefix("kpfast::") for name, _ in self.calls if name.startswith("kpfast::")]


def expected_launches(ops, integer_input, inverse, normalized):
    """The fusion claim (docs/semantics.md §5): one table launch for any uint8 chain; for float
    input, one affine pass per value change before the first FFX (the inverse of Normalize counts
    as one; Normalize at the end of a forward chain folds into the pass before it), then one
    table launch from FFX on; a chain without FFX is affine only."""
    if integer_input:
        return ["block_lut"]
    order = list(ops[::-1]) if inverse else list(ops)
    changes = ["unnormalize"] if inverse and normalized else []
    for op in order:
        if op == "ffx":
            return ["block_affine"] * len(changes) + ["block_lut"]
        if op == "negpos":
            changes.append(op)
    return ["block_affine"] * max(1, len(changes))


@pytest.mark.parametrize("ops", DISTINCT_CHAINS, ids="+".join)
@pytest.mark.parametrize("normalized", [False, True])
def test_op_launches_per_chain(ops, normalized):
    keys = kpfast.KeySet.from_seed(seed(), 2)  # one password for all: inverse FFX in one launch
    norm = CIFAR if normalized else {}
    g = torch.Generator().manual_seed(seed())
    for integer_input, inverse in itertools.product((True, False), (False, True)):
        t = kpfast.BlockTransform([keys, keys.swap(0, 1)], ops, rounding="nearest", **norm)
        x = images(4, 3, 8, 8, torch.uint8 if integer_input else torch.float32, g)
        key_index = torch.tensor([0, 1, 1, 0])
        run = t.inverse if inverse else t.forward
        run(x, key_index)  # compiled outside the recording
        with torch.no_grad(), RecordOps() as record:
            out = run(x, key_index)
        want = expected_launches(ops, integer_input, inverse, normalized)
        assert record.kpfast_ops() == want, (integer_input, inverse)
        # and no other op writes an image-sized tensor (no cast or copy of the images; views of
        # the images write nothing)
        others = [name for name, o in record.calls if not name.startswith("kpfast::")
                  and isinstance(o, torch.Tensor) and o.numel() >= x.numel()
                  and o.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
        assert others == [], (integer_input, inverse, others)
        program = t.program(inverse=inverse, integer_input=integer_input)
        kinds = ["block_affine" if isinstance(l, AffineLaunch) else "block_lut" for l in program.launches]
        assert kinds == want and out.shape == x.shape


@pytest.mark.parametrize("M, C", [(1, 3), (2, 1), (4, 3), (8, 3)])
def test_many_keys_in_one_program_match_the_reference_per_key(M, C):
    g = torch.Generator().manual_seed(seed())
    K = 5
    keys = kpfast.KeySet.generate_many(K, M, C, rng=g)
    for ops in [("shuffle", "negpos", "ffx"), ("ffx", "shuffle", "negpos"), ("negpos", "shuffle"), ("ffx",)]:
        for dtype, norm in itertools.product((torch.uint8, torch.float32), ({}, CIFAR if C == 3 else {})):
            program = plan.compile(keys, ops, integer_input=dtype == torch.uint8, **norm)
            assert program.num_keys == K and program.ops == ops
            x = images(7, C, 2 * M, 3 * M, dtype, g)
            key_index = torch.randint(0, K, (7,), generator=g)
            out = program(x, key_index)
            for n, k in enumerate(key_index.tolist()):
                assert torch.equal(out[n:n + 1], reference(x[n:n + 1], keys[k], ops, **norm)), (ops, dtype, n)


def test_inverse_program_of_many_keys_matches_the_reference():
    g = torch.Generator().manual_seed(seed())
    password = kpfast.KeySet.generate(4, rng=g).ffx_password
    keys = [k.replace(ffx_password=password) for k in kpfast.KeySet.generate_many(4, 4, rng=g)]
    for ops in [("shuffle", "negpos", "ffx"), ("ffx", "shuffle"), ("negpos",)]:
        forward = plan.compile(keys, ops, integer_input=True, rounding="nearest")
        inverse = plan.compile(keys, ops, integer_input=False, inverse=True)
        x = images(6, 3, 8, 8, torch.uint8, g)
        key_index = torch.randint(0, 4, (6,), generator=g)
        y = forward(x, key_index)
        got = inverse(y, key_index)
        for n, k in enumerate(key_index.tolist()):
            want = torch.from_numpy(ref.inverse(y[n:n + 1].numpy(), keys[k], ops))
            assert torch.equal(got[n:n + 1], want)
        assert torch.equal(torch.round(got * 255).to(torch.uint8), x)


def test_tables_are_deduplicated_across_keys_and_positions():
    g = torch.Generator().manual_seed(seed())
    keys = kpfast.KeySet.generate_many(6, 4, rng=g)
    program = plan.compile(keys, OPS, integer_input=True, **CIFAR)
    (launch,) = program.launches
    assert torch.unique(launch.tables, dim=0).shape == launch.tables.shape
    assert launch.table_id.shape == (6, 48) and int(launch.table_id.max()) < launch.tables.shape[0]
    # at most 2 (NP) x 2 (FFX) x 3 (channel statistics) distinct tables per key
    assert launch.tables.shape[0] <= 6 * 12
    for k, key in enumerate(keys):
        alone = plan.compile(key, OPS, integer_input=True, **CIFAR).launches[0]
        assert torch.equal(launch.tables[launch.table_id[k]], alone.tables[alone.table_id[0]])
        assert torch.equal(launch.src[k], alone.src[0])


@pytest.mark.parametrize("integer_input, inverse", [(True, False), (False, False), (False, True)])
def test_compiling_in_chunks_gives_the_same_program(monkeypatch, integer_input, inverse):
    g = torch.Generator().manual_seed(seed())
    password = kpfast.KeySet.generate(2, rng=g).ffx_password
    keys = [k.replace(ffx_password=password) for k in kpfast.KeySet.generate_many(5, 2, rng=g)]
    for ops in [("negpos", "shuffle", "ffx"), ("shuffle", "negpos")]:
        whole = plan.compile(keys, ops, integer_input=integer_input, inverse=inverse, **CIFAR)
        monkeypatch.setattr(plan, "_CHUNK_ELEMENTS", 1)  # one key per chunk
        chunked = plan.compile(keys, ops, integer_input=integer_input, inverse=inverse, **CIFAR)
        monkeypatch.undo()
        assert len(whole.launches) == len(chunked.launches)
        for a, b in zip(whole.launches, chunked.launches):
            assert type(a) is type(b)
            for name in ("src", "params") if isinstance(a, AffineLaunch) else ("src", "table_id", "tables"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_program_options_and_errors():
    keys = kpfast.KeySet.generate(2)
    program = plan.compile(keys, ["shuffle"], integer_input=True, dtype=torch.float16)
    assert program.ops == ("shuffle",) and program.launches[0].tables.dtype == torch.float16
    assert program(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).dtype == torch.float16
    assert program.to("meta").device.type == "meta" and program.device.type == "cpu"
    text = repr(program)
    assert "launches=lut" in text and "tensor" not in text and str(keys.perm.tolist()[1:4])[1:-1] not in text
    with pytest.raises(ValueError, match="unknown transform 'rotate'"):
        plan.compile(keys, ["rotate"], integer_input=True)
    with pytest.raises(TypeError, match="sequence of transform names"):
        plan.compile(keys, "shuffle", integer_input=True)
    with pytest.raises(ValueError, match="rounding"):
        plan.compile(keys, OPS, integer_input=False, rounding="up")
    with pytest.raises(ValueError, match="different maxima"):
        others = [kpfast.KeySet.generate(2) for _ in range(2)]
        while others[0].ffx_max == others[1].ffx_max:
            others[1] = kpfast.KeySet.generate(2)
        plan.compile(others, OPS, integer_input=False, inverse=True)


def test_a_chain_without_ffx_never_derives_an_ffx_table(monkeypatch):
    def refuse(password):
        raise AssertionError("an FFX table was derived")

    monkeypatch.setattr(kpfast.keys, "cached_ffx_table", refuse)
    keys = kpfast.KeySet.generate_many(64, 4)
    t = kpfast.BlockTransform(keys, ("shuffle", "negpos"), **CIFAR)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    t(x, torch.arange(64))
    t(x.float() / 255, torch.arange(64))
    t.inverse(t(x, torch.arange(64)), torch.arange(64))
    with pytest.raises(AssertionError, match="FFX table"):
        kpfast.FFX(keys)(x, torch.arange(64))


@pytest.fixture
def compiles(monkeypatch):
    """The (inverse, integer_input) of every plan.compile call."""
    calls = []
    real = plan.compile

    def counting(*args, **kwargs):
        calls.append((kwargs["inverse"], kwargs["integer_input"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(plan, "compile", counting)
    return calls


def test_modules_compile_each_program_on_first_use_only(compiles):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, rounding="nearest")
    assert compiles == []  # construction compiles nothing
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for _ in range(3):
        y = t(x)
    assert compiles == [(False, True)]  # a forward-only transform compiles no inverse chain
    t(x.float() / 255)
    t.inverse(y)
    t.inverse(y)
    assert compiles == [(False, True), (False, False), (True, False)]
    assert torch.equal(torch.round(t.inverse(y) * 255).to(torch.uint8), x)


def test_programs_follow_the_device_but_not_the_dtype():
    keys = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(keys)
    x = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    want = t(x)
    t.to("meta")
    assert t.program().device.type == "meta" and t.program(integer_input=False).device.type == "meta"
    with pytest.raises(ValueError, match="transform is on meta"):
        t(x)
    t.to("cpu").double().half()
    assert t.program().launches[0].tables.dtype == torch.float32
    assert torch.equal(t(x), want) and len(t.state_dict()) == 0 and list(t.buffers()) == []


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_builds_programs_lazily_without_graph_breaks(backend):
    # A fresh transform: every program is built while dynamo traces, outside the graph.
    torch._dynamo.reset()  # no cache entries of other tests' transforms
    keys = kpfast.KeySet.from_seed(seed(), 4, password=kpfast.KeySet.generate(4).ffx_password)
    t = kpfast.BlockTransform([keys, keys.swap(3, 7)], rounding="nearest", **CIFAR)
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)

    def step(x_u8, x_f, key_index):
        y = t(x_u8, key_index)
        return y, t(x_f, key_index), t.inverse(y, key_index)

    compiled = torch.compile(step, fullgraph=True, backend=counter)
    g = torch.Generator().manual_seed(seed())
    x = images(4, 3, 8, 8, torch.uint8, g)
    xf, key_index = images(4, 3, 8, 8, torch.float32, g), torch.tensor([1, 0, 0, 1])
    got = compiled(x, xf, key_index)
    eager = kpfast.BlockTransform([keys, keys.swap(3, 7)], rounding="nearest", **CIFAR)
    want = (eager(x, key_index), eager(xf, key_index), eager.inverse(eager(x, key_index), key_index))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.equal(torch.round(got[2] * 255).to(torch.uint8), x)
    x2 = images(4, 3, 8, 8, torch.uint8, g)
    compiled(x2, xf, key_index)
    assert counter.frame_count == 1  # one graph, no recompilation on the second call
    # the programs built while tracing serve eager calls too
    assert torch.equal(t(x2, key_index), eager(x2, key_index))


def test_torch_compile_of_the_module_itself():
    t = kpfast.FFX(kpfast.KeySet.generate(2), rounding="nearest")
    compiled = torch.compile(t, fullgraph=True, backend="aot_eager")
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(compiled(x), kpfast.FFX(t._keys[0], rounding="nearest")(x))
    assert isinstance(t.program(), Program) and isinstance(t.program().launches[0], LutLaunch)


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_of_a_fresh_transform(strict):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, rounding="nearest", **CIFAR)

    class Protect(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = t

        def forward(self, x):
            y = self.t(x)
            return y, self.t(x.float() / 255), self.t.inverse(y)

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    exported = torch.export.export(Protect(), (x,), strict=strict)
    eager = kpfast.BlockTransform(keys, rounding="nearest", **CIFAR)
    for got, want in zip(exported.module()(x), (eager(x), eager(x.float() / 255), eager.inverse(eager(x)))):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_functional_forms_with_a_program_under_torch_compile(backend):
    keys = kpfast.KeySet.generate(4)
    program = plan.compile(keys, ("negpos", "ffx"), integer_input=False, rounding="nearest")
    compiled = torch.compile(lambda v: kpfast.functional.block_transform(v, program), fullgraph=True,
                             backend=backend)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(compiled(x), kpfast.BlockTransform(keys, ("negpos", "ffx"), rounding="nearest")(x))


def test_programs_built_in_inference_mode_serve_autograd():
    keys = kpfast.KeySet.generate(2)
    t = kpfast.BlockTransform(keys, ("shuffle", "negpos"), **CIFAR)
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    with torch.inference_mode():
        first = t(x.detach())  # compiled here
        kpfast.functional.negpos(x.detach(), keys)
    t(x).sum().backward()
    kpfast.functional.negpos(x, keys).sum().backward()
    assert torch.equal(first, t(x.detach())) and x.grad is not None


# --- block scrambling: one more gather, in the first launch -----------------------------------

def test_transforms_names_every_transform_and_the_default_chain_is_the_papers():
    assert plan.TRANSFORMS == ("shuffle", "negpos", "ffx", "scramble")
    assert plan.IN_BLOCK_TRANSFORMS == ("shuffle", "negpos", "ffx")
    keys = kpfast.KeySet.generate(2)
    assert kpfast.BlockTransform(keys).ops == plan.IN_BLOCK_TRANSFORMS
    assert plan.compile(keys, integer_input=True).ops == plan.IN_BLOCK_TRANSFORMS


@pytest.mark.parametrize("ops", DISTINCT_CHAINS, ids="+".join)
def test_scrambling_adds_no_launch(ops):
    g = torch.Generator().manual_seed(seed())
    password = kpfast.KeySet.generate(2, rng=g).ffx_password
    keys = [k.replace(ffx_password=password) for k in kpfast.KeySet.generate_many(2, 2, grid=(4, 3), rng=g)]
    block_perm = torch.stack([k.block_perm for k in keys])
    for place in range(len(ops) + 1):
        chain = ops[:place] + ("scramble",) + ops[place:]
        for integer_input, inverse in itertools.product((True, False), (False, True)):
            if integer_input and inverse:
                continue  # inverse chains take float input
            program = plan.compile(keys, chain, integer_input=integer_input, inverse=inverse, rounding="nearest")
            kinds = ["block_affine" if isinstance(l, AffineLaunch) else "block_lut" for l in program.launches]
            assert kinds == expected_launches(ops, integer_input, inverse, False), (chain, integer_input, inverse)
            first, *rest = program.launches
            want = torch.argsort(block_perm, dim=1) if inverse else block_perm
            assert torch.equal(first.block_src, want) and all(l.block_src is None for l in rest)
            # the in-block part is the chain's without scrambling
            alone = plan.compile(keys, ops, integer_input=integer_input, inverse=inverse, rounding="nearest")
            for a, b in zip(program.launches, alone.launches):
                assert torch.equal(a.src, b.src)
    x = images(4, 3, 8, 6, torch.uint8, g)
    key_index = torch.tensor([1, 0, 0, 1])
    t = kpfast.BlockTransform(keys, ("scramble", *ops), rounding="nearest", **CIFAR)
    t(x, key_index)
    with torch.no_grad(), RecordOps() as record:
        out = t(x, key_index)
    assert record.kpfast_ops() == ["block_lut"]
    for n, k in enumerate(key_index.tolist()):
        want = reference(x[n:n + 1], keys[k], ("scramble", *ops), rounding="nearest", **CIFAR)
        assert torch.equal(out[n:n + 1], want)


def test_scrambling_needs_keys_for_one_grid():
    with pytest.raises(ValueError, match="no block-scrambling key"):
        plan.compile(kpfast.KeySet.generate(2), ("shuffle", "scramble"), integer_input=True)
    keys = [kpfast.KeySet.generate(2, grid=(2, 2)), kpfast.KeySet.generate(2, grid=(4, 1))]
    with pytest.raises(ValueError, match=r"different grids: \[\(2, 2\), \(4, 1\)\]"):
        plan.compile(keys, ("scramble",), integer_input=True)
    assert all(l.block_src is None for l in plan.compile(keys, ("shuffle",), integer_input=True).launches)
