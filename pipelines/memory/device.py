"""Device, dtype and memory: explicit, never a hard-coded "cuda"."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

DEVICE_ENV = "FLUXFORGE_DEVICE"


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; FLUXFORGE_DEVICE or ``requested`` overrides."""
    name = requested or os.environ.get(DEVICE_ENV)
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} is not available here: no CUDA device; use 'cpu'.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r} is not available here: no Apple MPS device; use 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 wherever it runs (fp16 turns FLUX images black); float32 otherwise."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "mps":
        try:
            torch.zeros(1, dtype=torch.bfloat16, device=device) + 1
            return torch.bfloat16
        except (RuntimeError, TypeError):
            return torch.float32
    return torch.bfloat16


def free_memory(device: torch.device) -> int | None:
    """Bytes free for weights on ``device``: CUDA free memory, Apple MPS's one pool (mps_memory), CPU available RAM.
    Auto, placement and the estimate all read this one figure per device."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        return mps_memory()[1]
    import psutil

    return int(psutil.virtual_memory().available)


def unified_free(recommended_bytes: int, allocated_bytes: int, available_bytes: int) -> int:
    """What Apple Silicon's one memory pool has left for the studio's tensors: Metal's recommended maximum for this
    process less what the Metal driver already holds for it, and never more than the RAM the system still has
    available (the CPU and the GPU share it: another app's memory is gone for both)."""
    return max(0, min(recommended_bytes - allocated_bytes, available_bytes))


def mps_memory() -> tuple[int, int]:
    """(total, free) of Apple MPS's one pool: Metal's recommended maximum, and unified_free."""
    import psutil

    total = int(torch.mps.recommended_max_memory())
    free = unified_free(total, int(torch.mps.driver_allocated_memory()), int(psutil.virtual_memory().available))
    return total, free


def device_memory(device: torch.device, held_bytes: int = 0):
    """(total, free, what free means) for estimates (pipelines.memory.estimate.DeviceMemory): the same free memory as
    free_memory (CUDA free memory, Apple MPS's one pool, CPU available RAM); ``held_bytes`` (what the studio's loaded
    models hold, which it unloads to make room) counts as free."""
    from .estimate import DeviceMemory

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        what = "free GPU memory"
    elif device.type == "mps":
        total, free = mps_memory()
        what = "of Metal's recommended maximum free (one pool for the CPU and the GPU)"
    else:
        import psutil

        memory = psutil.virtual_memory()
        free, total, what = memory.available, memory.total, "available RAM"
    return DeviceMemory(device.type, int(total), min(int(total), int(free) + held_bytes), what)


def memory_kind(device: torch.device) -> str:
    return {"cuda": "cuda", "mps": "mps-driver+rss"}.get(device.type, "cpu-rss")


def mps_pool(driver_bytes: int, rss_bytes: int) -> int:
    """What a run holds of a Mac's one pool of memory: Metal's allocations (the MPS driver's: tensors on the GPU, in
    private storage, which the process's RSS does not count) plus the process's own (CPU tensors, a component parked
    on the CPU, the pipeline's NumPy and PIL images), which take the same memory."""
    return driver_bytes + rss_bytes


def empty_cache(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@dataclass
class PeakMemory:
    """Peak memory of a block: CUDA max allocated (and max reserved: what the caching allocator held, the memory the
    card really had to have), sampled process RSS on a CPU, and on Apple MPS both sampled and added up (mps_pool)."""

    device: torch.device
    interval: float = 0.02
    peak_bytes: int = 0
    peak_reserved_bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        self._stop = threading.Event()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> int:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
        if self.device.type == "mps":
            return mps_pool(int(torch.mps.driver_allocated_memory()), rss)
        return rss

    def _sample(self) -> None:
        if self.device.type == "cuda":
            return
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._read())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
        else:
            self.peak_bytes = max(self.peak_bytes, self._read())
