"""Device choice in one place: auto = CUDA, then MPS, then CPU; and which reduced precision to use."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(spec: str | torch.device = "auto") -> torch.device:
    """Resolve a device request.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), ``"mps"`` or a `torch.device`.

    Raises:
        InputError: the requested device is unknown or not available on this machine (a `torch.device`
            is checked the same way as its name).
        TypeError: `spec` is neither a string nor a `torch.device`.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'mps' or a torch.device, got {type(spec).__name__}")
    spec = spec.lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind not in DEVICES or kind == "auto" and index or index and not index.isdigit():
        raise InputError(f"unknown device '{spec}': use one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{spec}' requested but no CUDA GPU is available")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InputError(f"device '{spec}' requested but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but Apple MPS is not available")
    return torch.device(spec)


#: glibc `mallopt` parameters and the values `keep_freed_memory` sets: blocks of up to 32 MB (glibc's
#: largest mmap threshold on 64-bit) come from the heap, and up to 256 MB freed at its top stay mapped.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process reuse freed memory instead of mapping fresh pages for every large temporary.

    Tiled prediction allocates and frees arrays of 1-30 MB per tile (activations, probabilities,
    resampled windows). glibc serves those by mmap and unmaps them on free unless its dynamic mmap
    threshold has grown past them; dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``,
    which also freezes that threshold at 128 kB, so each one is faulted in, zeroed, again. Measured
    (`benchmarks/allocator.py`, 2048^2 plane): 1.6x as long under dask's setting as with these values,
    which match or beat glibc's default (up to 1.13x on one thread). Linux with glibc only, once per
    process; left alone when the user set ``MALLOC_MMAP_THRESHOLD_``. Returns whether it applied them.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision to run inference and training in on `device`, or None for fp32.

    CUDA: bf16 where supported, else fp16. CPU: bf16 only with native bf16 instructions (measured
    ~2x faster than fp32 there; emulated bf16 is slower). MPS: fp16.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    if device.type == "mps":
        return torch.float16
    return None


def describe(device: torch.device) -> str:
    """A human-readable name, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads, bf16)'."""
    dtype = autocast_dtype(device)
    prec = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, {prec})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''}, {prec})"
    return f"{device.type} ({prec})"
