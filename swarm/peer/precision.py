"""The compute device and dtype a peer runs with, decided by name.

Without torch: a join chooses its blocks (which depends on the dtype's size) while torch is still being imported
on another thread (swarm.peer.preload), so nothing here may wait for it, except asking for a GPU.
"""

from __future__ import annotations

from swarm.errors import SwarmError

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# Bytes per element of the float dtypes a checkpoint is stored in or computed with.
ITEM_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}


def compute_dtype(requested: str, manifest_dtype: str, device: str) -> str:
    """The compute dtype's name: `auto` keeps the checkpoint's float dtype, except half precision on a CPU."""
    if requested not in DTYPE_CHOICES:
        raise SwarmError(f"unknown dtype {requested!r}; choose from {', '.join(DTYPE_CHOICES)}")
    if requested != "auto":
        return requested
    # float16 matmuls on CPU are slow and partly unsupported; bfloat16 is fine there.
    if manifest_dtype == "float16" and device == "cpu":
        return "float32"
    return manifest_dtype if manifest_dtype in ITEM_SIZES else "float32"


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise SwarmError(f"unknown device {device!r}; choose cpu or cuda")
    if device == "cuda":
        import torch  # only a GPU peer waits for torch here: it must know before fetching for nothing

        if not torch.cuda.is_available():
            raise SwarmError("--device cuda was asked for, but torch sees no CUDA device on this machine")
    return device
