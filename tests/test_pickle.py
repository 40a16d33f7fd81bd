"""Key material never leaves in a pickle by accident: pickling keys, programs, transforms and
protected models raises a clear error, while DataLoader workers (fork and spawn, for real) still
receive a dataset that holds a transform, and copy.deepcopy works in memory."""
import copy
import io
import multiprocessing.context
import pickle
from contextlib import contextmanager

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import kpfast
from kpfast import plan
from kpfast.keys import KeyPicklingError
from kpfast.models import create_model

CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
MARKED_PASSWORD = bytes.fromhex("deadbeefcafebabe0123456789abcdef")


def marked_keys() -> kpfast.KeySet:
    k = kpfast.KeySet.generate(4)
    return k.replace(ffx_password=MARKED_PASSWORD)


@contextmanager
def spawning():
    """Pickle as multiprocessing does while it starts a spawn/forkserver child."""
    multiprocessing.context.set_spawning_popen(object())
    try:
        yield
    finally:
        multiprocessing.context.set_spawning_popen(None)


def holders():
    keys = marked_keys()
    t = kpfast.BlockTransform(keys, **CIFAR)
    t(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))  # with a compiled program inside
    model = kpfast.ProtectedModel(create_model("small_cnn", num_classes=10), t)
    return {"keys": keys, "transform": t, "program": t.program(), "launch": t.program().launches[0],
            "protected model": model, "list of keys": [keys], "shuffle": kpfast.Shuffle(keys)}


@pytest.mark.parametrize("name", list(holders()))
@pytest.mark.parametrize("dump", ["pickle", "torch.save"])
def test_pickling_key_material_is_refused(name, dump):
    obj = holders()[name]
    buffer = io.BytesIO()
    with pytest.raises(KeyPicklingError, match=r"KeySet.save\(path\).*ProtectedModel.save\(path\)") as info:
        pickle.dump(obj, buffer) if dump == "pickle" else torch.save(obj, buffer)
    assert isinstance(info.value, kpfast.errors.KpfastError)
    assert MARKED_PASSWORD not in buffer.getvalue() and "deadbeef" not in str(info.value)


def test_checkpoints_and_state_dicts_stay_possible():
    model = holders()["protected model"]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # the weights alone carry no key
    torch.save(model.checkpoint(), buffer)
    assert MARKED_PASSWORD not in buffer.getvalue()


def test_transform_survives_the_pickle_of_process_spawning():
    t = holders()["transform"]
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with spawning():
        clone = pickle.loads(pickle.dumps(t))
    assert clone._programs.forward_uint8 is None  # the child compiles what it uses
    assert torch.equal(clone(x), t(x)) and torch.equal(clone.inverse(clone(x)), t.inverse(t(x)))
    assert clone.fingerprint() == t.fingerprint() and clone.config() == t.config()


def test_deepcopy_and_copy_work_in_memory():
    objects = holders()
    t, model = objects["transform"], objects["protected model"]
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for clone in (copy.deepcopy(t), copy.copy(t)):
        assert clone is not t and torch.equal(clone(x), t(x)) and clone.fingerprint() == t.fingerprint()
    clone = copy.deepcopy(t)
    clone.to("meta")  # moving the copy leaves the original where it is
    assert t.program().device.type == "cpu" and torch.equal(t(x), clone.to("cpu")(x))
    twin = copy.deepcopy(model)
    assert twin.model is not model.model and torch.equal(twin(x), model(x))
    for p in twin.model.parameters():
        p.data.add_(1)
    assert not torch.equal(twin(x), model(x))
    assert copy.deepcopy(objects["program"]) is objects["program"]


class KeyedImages(Dataset):
    """A dataset that protects its images on the fly (the transform travels to the workers)."""

    def __init__(self, transform, images):
        self.transform = transform
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_receive_the_transform(start_method):
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method here")
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    keys = kpfast.KeySet.generate(4, rng=g)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    t = kpfast.BlockTransform(keys, rounding="nearest", **CIFAR)
    t(images)  # programs compiled in the parent: they must not break the hand-over either
    loader = DataLoader(KeyedImages(t, images), batch_size=3, num_workers=1,
                        multiprocessing_context=start_method)
    got = torch.cat(list(loader))
    assert torch.equal(got, t(images))


def test_programs_from_plan_compile_refuse_pickling_too():
    program = plan.compile(kpfast.KeySet.generate(2), ("shuffle",), integer_input=False)
    with pytest.raises(KeyPicklingError):
        pickle.dumps(program)
    with spawning():
        assert torch.equal(pickle.loads(pickle.dumps(program)).launches[0].src, program.launches[0].src)
