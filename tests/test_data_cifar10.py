"""CIFAR-10 download, verification and parsing, against a tiny archive served on 127.0.0.1."""

import hashlib
import io
import pickle
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from kpfast.data.cifar10 import ARCHIVE_NAME, load_cifar10, read_archive
from kpfast.data.download import ChecksumError, download_file, verify_file

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 3


class Server:
    """Serves `routes[path] = body` or `(body, declared_length)` over HTTP on a random port."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | tuple[bytes, int]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in routes:
                    self.send_error(404)
                    return
                route = routes[self.path]
                body, length = route if isinstance(route, tuple) else (route, len(route))
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)  # fewer bytes than declared: the connection just closes

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def make_archive(seed: int = 0, protocol: int = 2, legacy_numpy: bool = False,
                 evil: bool = False) -> tuple[bytes, dict[str, dict]]:
    """A cifar-10-python.tar.gz in the original format, with PER_BATCH images per batch."""
    rng = np.random.default_rng(seed)
    batches: dict[str, dict] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, PER_BATCH).tolist(),
            b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(PER_BATCH)],
        }
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [n.encode() for n in NAMES],
            b"num_vis": 3072}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, obj in [*batches.items(), ("batches.meta", meta)]:
            data = pickle.dumps(obj, protocol=protocol)
            if legacy_numpy:  # as written by numpy 1 (the real archive)
                data = data.replace(b"numpy._core", b"numpy.core")
            if evil and name == "test_batch":
                data = pickle.dumps(Evil(), protocol=protocol)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), batches


class Evil:
    def __reduce__(self):
        return print, ("this must never run",)


def checksums(data: bytes) -> dict[str, str]:
    return dict(md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture
def archive():
    return make_archive()


# --- download_file / verify_file ---------------------------------------------------------------

def test_download_ok(server, tmp_path):
    server.routes["/f"] = b"hello" * 1000
    dest = download_file(server.url("/f"), tmp_path / "f", progress=False,
                         **checksums(b"hello" * 1000))
    assert dest.read_bytes() == b"hello" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_truncated_download_leaves_nothing(server, tmp_path):
    data = b"x" * 100_000
    server.routes["/f"] = (data[:40_000], len(data))
    with pytest.raises(ChecksumError, match="received 40000 of 100000 bytes") as e:
        download_file(server.url("/f"), tmp_path / "f", progress=False, **checksums(data))
    assert str(tmp_path / "f") in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_file_leaves_nothing(server, tmp_path):
    server.routes["/f"] = b"not the archive"
    expected = checksums(b"the archive")
    with pytest.raises(ChecksumError) as e:
        download_file(server.url("/f"), tmp_path / "f", progress=False, md5=expected["md5"])
    message = str(e.value)
    assert expected["md5"] in message and hashlib.md5(b"not the archive").hexdigest() in message
    assert str(tmp_path / "f") in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_leaves_nothing(server, tmp_path):
    with pytest.raises(OSError, match="404"):
        download_file(server.url("/missing"), tmp_path / "f", progress=False, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_download_needs_a_checksum(tmp_path):
    with pytest.raises(ValueError, match="checksum"):
        download_file("http://127.0.0.1:9/f", tmp_path / "f")


def test_verify_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    verify_file(f, **checksums(b"abc"))
    with pytest.raises(ChecksumError, match=f"{f} is corrupt: expected sha256 .*, got sha256"):
        verify_file(f, sha256=checksums(b"abd")["sha256"])
    assert f.exists()
    with pytest.raises(ChecksumError, match="removed it"):
        verify_file(f, md5=checksums(b"abd")["md5"], remove=True)
    assert not f.exists()


# --- load_cifar10 --------------------------------------------------------------------------------

def test_download_and_parse(server, tmp_path, archive):
    data, batches = archive
    server.routes["/c.tar.gz"] = data
    train, test = load_cifar10(tmp_path, url=server.url("/c.tar.gz"), progress=False,
                               **checksums(data))
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and test.images.shape == (PER_BATCH, 3, 32, 32)
    assert list(train.classes) == NAMES == list(test.classes)
    expected_x = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    expected_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.labels.tolist() == expected_y
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    # CHW: value (c, y, x) of image i is byte c * 1024 + y * 32 + x of its row.
    rng = np.random.default_rng(1)
    for i, c, y, x in zip(rng.integers(0, 15, 50), rng.integers(0, 3, 50),
                          rng.integers(0, 32, 50), rng.integers(0, 32, 50)):
        assert train.images[i, c, y, x] == expected_x[i, c * 1024 + y * 32 + x]
    assert np.array_equal(test.images.reshape(PER_BATCH, -1).numpy(), batches["test_batch"][b"data"])
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == data
    assert not list(tmp_path.glob("*.part"))
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_second_call_uses_decoded_cache(server, tmp_path, archive):
    data, _ = archive
    server.routes["/c.tar.gz"] = data
    kwargs = dict(url=server.url("/c.tar.gz"), progress=False, **checksums(data))
    first, _ = load_cifar10(tmp_path, **kwargs)
    server.stop()
    (tmp_path / ARCHIVE_NAME).unlink()  # neither the network nor the archive is needed now
    second, _ = load_cifar10(tmp_path, **kwargs)
    assert np.array_equal(first.images.numpy(), second.images.numpy())


def test_default_root_is_the_cache(server, tmp_path, archive, monkeypatch):
    data, _ = archive
    server.routes["/c.tar.gz"] = data
    monkeypatch.setenv("KPFAST_CACHE", str(tmp_path / "cache"))
    load_cifar10(url=server.url("/c.tar.gz"), progress=False, md5=checksums(data)["md5"], sha256=None)
    assert (tmp_path / "cache" / ARCHIVE_NAME).exists()


def test_truncated_archive_download(server, tmp_path, archive):
    data, _ = archive
    server.routes["/c.tar.gz"] = (data[: len(data) // 2], len(data))
    with pytest.raises(ChecksumError, match=ARCHIVE_NAME):
        load_cifar10(tmp_path, url=server.url("/c.tar.gz"), progress=False, **checksums(data))
    assert list(tmp_path.iterdir()) == []


def test_wrong_archive_download(server, tmp_path, archive):
    data, _ = archive
    other, _ = make_archive(seed=1)
    server.routes["/c.tar.gz"] = other
    with pytest.raises(ChecksumError) as e:
        load_cifar10(tmp_path, url=server.url("/c.tar.gz"), progress=False, **checksums(data))
    assert checksums(data)["sha256"] in str(e.value) and checksums(other)["sha256"] in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_archive_is_removed_then_redownloaded(server, tmp_path, archive):
    data, _ = archive
    server.routes["/c.tar.gz"] = data
    cached = tmp_path / ARCHIVE_NAME
    cached.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    kwargs = dict(url=server.url("/c.tar.gz"), progress=False, **checksums(data))
    with pytest.raises(ChecksumError, match=str(cached)):
        load_cifar10(tmp_path, **kwargs)
    assert not cached.exists()
    train, _ = load_cifar10(tmp_path, **kwargs)  # the next call fetches a good copy
    assert len(train) == 5 * PER_BATCH and cached.read_bytes() == data


def test_local_archive_path_without_download(tmp_path, archive):
    data, batches = archive
    path = tmp_path / "my-copy.tar.gz"
    path.write_bytes(data)
    train, test = load_cifar10(path, download=False, **checksums(data))
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    other = tmp_path / "elsewhere" / "other.tar.gz"  # away from the decoded cache beside path
    other.parent.mkdir()
    other.write_bytes(data[:-1])
    with pytest.raises(ChecksumError, match="left in place"):
        load_cifar10(other, download=False, **checksums(data))
    assert other.exists()  # the caller's own file is not deleted
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_cifar10(tmp_path / "nothing-here", download=False, **checksums(data))


@pytest.mark.parametrize("protocol, legacy", [(2, True), (4, False), (5, False)])
def test_pickle_variants(tmp_path, protocol, legacy):
    data, batches = make_archive(protocol=protocol, legacy_numpy=legacy)
    (tmp_path / "a.tar.gz").write_bytes(data)
    arrays = read_archive(tmp_path / "a.tar.gz")
    assert np.array_equal(arrays["x_test"].reshape(PER_BATCH, -1), batches["test_batch"][b"data"])


def test_code_in_a_pickle_is_refused(tmp_path, capsys):
    data, _ = make_archive(evil=True)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="refusing to load .*print"):
        load_cifar10(path, **checksums(data))
    assert "must never run" not in capsys.readouterr().out


def test_archive_missing_a_batch(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    path = Path(tmp_path / "a.tar.gz")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="missing batches.meta, data_batch_1"):
        read_archive(path)


def test_reference_checksums_are_well_formed():
    from kpfast.data import cifar10

    assert len(cifar10.MD5) == 32 and len(cifar10.SHA256) == 64
    assert int(cifar10.MD5, 16) and int(cifar10.SHA256, 16)
