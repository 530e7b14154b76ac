"""Numeric precision modes shared by the trainers.

- ``fp32``: plain float32 everywhere (the reference; bit-reproducible on CPU).
- ``bf16``: ``torch.autocast`` to bfloat16 for matrix multiplies; activations between them are
  bf16 too. Parameters and optimizer state stay float32.
- ``bf16_matmul``: tensors stay float32; only the insides of float32 matrix multiplies may use
  bfloat16 (oneDNN/AMX on CPU) or TF32 (CUDA), via ``torch.set_float32_matmul_precision("medium")``
  for the duration of the block. On CPUs without fast bf16 it falls back to float32. Elementwise
  work stays float32, which on CPU is faster than bf16 elementwise work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "precision_context", "backward_context"]

PRECISIONS = ("fp32", "bf16", "bf16_matmul")


@contextlib.contextmanager
def _matmul_precision(value: str) -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def backward_context(precision: str) -> contextlib.AbstractContextManager:
    """The context for ``loss.backward()``: ``bf16_matmul`` must also cover the backward
    matrix multiplies; autocast must not (PyTorch runs backward ops in the forward's dtypes)."""
    if precision == "bf16_matmul":
        return _matmul_precision("medium")
    return contextlib.nullcontext()


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the block in ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "bf16":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    elif precision == "bf16_matmul":
        with _matmul_precision("medium"):
            yield
    else:
        yield


#: /proc/cpuinfo flags of CPU units that compute bf16 matrix products natively; where none is
#: present, bf16_matmul runs float32 kernels
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_description() -> str:
    """The CPU's model name and whether it has bf16 matrix units (``lscpu``'s flags), e.g.
    ``"Intel(R) Xeon(R) Processor (bf16 units: amx_bf16, avx512_bf16)"``: fp32 kernels, and so
    long trajectories, differ between such CPUs, so every quoted figure names it."""
    import platform

    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    if not flags:
        return name
    units = [f for f in BF16_FLAGS if f in flags]
    return f"{name} ({'bf16 units: ' + ', '.join(units) if units else 'no bf16 units'})"
