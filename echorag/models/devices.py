"""Where a model runs and in which dtype, for the processes that hold one.

Imports torch: only the generator, the kanana embedder and training import this module.
"""

from __future__ import annotations

import torch


def pick_device(device: str = "auto") -> str:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device(device: str | torch.device | None = None) -> torch.device:
    """As ``pick_device``, with ``None`` meaning ``"auto"``, as a ``torch.device``."""
    return torch.device(pick_device("auto" if device is None or str(device) == "auto" else device))


def pick_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that supports it, else float32; else the named torch dtype."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU bf16 matmuls are slow on most machines
