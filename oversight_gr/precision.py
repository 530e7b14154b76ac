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
