"""The seed state of one layer as a structure of arrays (appendix K.2.1), held as module buffers.

Buffers travel with ``state_dict()`` and ``.to(device)``. The CRC32 checksum covers the control state that only
lifecycle transitions may change (state codes, kernel ids, last-update epochs); it is sealed after each epoch
boundary and checked at the next one, so a change from anywhere else is detected there.
"""

from __future__ import annotations

import hashlib
import zlib

import torch

__all__ = ["HEALTH", "StateLayout", "kernel_hash"]

# Columns of health_accumulator.
HEALTH = {"samples": 0, "variance": 1, "dead": 2, "correlation": 3, "latency_us": 4, "latency_samples": 5,
          "recon_error": 6, "corr_samples": 7, "growth_layer": 8, "growth_model": 9, "growth_samples": 10}


def kernel_hash(artifact_id: str) -> int:
    """A signed 64-bit id for the state tensor (torch has no uint64 arithmetic on every device)."""
    if not artifact_id:
        return 0
    return int.from_bytes(hashlib.sha256(artifact_id.encode()).digest()[:8], "little", signed=True)


class StateLayout:
    """Names and dtypes of the per-seed tensors; ``create`` makes them for ``n`` seeds."""

    FIELDS = {
        "lifecycle_state": torch.uint8,
        "active_kernel_id": torch.int64,
        "alpha_blend": torch.float16,
        "health_accumulator": torch.float32,
        "last_update_epoch": torch.int32,
        "exec_latency_us": torch.int32,
        "ready": torch.bool,
    }
    CHECKSUMMED = ("lifecycle_state", "active_kernel_id", "last_update_epoch")

    @classmethod
    def create(cls, n: int, device=None) -> dict[str, torch.Tensor]:
        out = {}
        for name, dtype in cls.FIELDS.items():
            shape = (n, len(HEALTH)) if name == "health_accumulator" else (n,)
            out[name] = torch.zeros(shape, dtype=dtype, device=device)
        return out

    @classmethod
    def checksum(cls, tensors: dict[str, torch.Tensor]) -> int:
        crc = 0
        for name in cls.CHECKSUMMED:
            crc = zlib.crc32(tensors[name].detach().cpu().contiguous().numpy().tobytes(), crc)
        return crc
