"""Where tensors live: the one deliberate device-to-host copy, device memory and names.

On a GPU every read of a tensor's value by Python (``.cpu()``, ``.item()``, ``float(t)``,
``bool(t)``, ``.tolist()``) waits for all queued work and copies across the bus.  The
matcher therefore reads device results in exactly one place, :func:`to_host`, once per
batch of pairs: everything it needs on the host goes through one call, which packs the
tensors into a single buffer and copies it once.  Tests replace :func:`to_host` (it is
looked up on this module at every call) to count the copies or to feed fake tensors.

The memory helpers size batches on a CUDA device: :func:`free_memory` is what a new
allocation can use (the driver's free memory plus what PyTorch's caching allocator holds
unused); on the CPU they return None and nothing is sized.
"""

from __future__ import annotations

import math

import torch

from .errors import ScotError


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names, checked: ``cpu``, ``cuda`` or ``cuda:INDEX`` of a present GPU.

    ``cuda`` is the current GPU with its index filled in, so that the model's device
    compares equal to its tensors' devices.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ScotError(f"'{name}' is not a device (use cpu, cuda or cuda:INDEX)", option="device") from None
    if device.type not in ("cpu", "cuda"):
        raise ScotError(f"'{name}' is not supported (use cpu, cuda or cuda:INDEX)", option="device")
    if device.type == "cpu":
        return torch.device("cpu")  # one host device: an index (cpu:0) would only defeat device comparisons
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScotError("CUDA was requested but no CUDA GPU is available; use cpu", option="device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ScotError(f"'{name}' does not exist: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                            f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})", option="device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


_EXACT = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.int8,
          torch.int16, torch.int32, torch.int64)


def to_host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in host memory, with one device-to-host copy per device they come from.

    Host tensors are returned as they are (no copy).  The others are flattened, cast to
    float64 (exact for every floating type up to float64, for bool and for integers of
    magnitude below 2**53, e.g. indices), concatenated, copied once and cut back into
    their shapes and dtypes.

    Args:
        tensors: any shapes and the dtypes listed above.

    Returns:
        One CPU tensor per input, in order.
    """
    out: list[torch.Tensor | None] = [t if t.device.type == "cpu" else None for t in tensors]
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if out[i] is None:
            if t.dtype not in _EXACT:
                raise TypeError(f"to_host: {t.dtype} cannot travel in the float64 buffer")
            by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        parts = [tensors[i].detach().reshape(-1).to(torch.float64) for i in indices]
        host = torch.cat(parts).cpu() if len(parts) > 1 else parts[0].cpu()
        offset = 0
        for i in indices:
            t = tensors[i]
            size = t.numel()
            out[i] = host[offset : offset + size].to(t.dtype).reshape(t.shape)
            offset += size
    return tuple(t for t in out if t is not None)


def is_accelerator(device: torch.device | str) -> bool:
    """True for a device whose values Python can only read through a copy (anything but the CPU)."""
    return torch.device(device).type != "cpu"


def free_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation on ``device`` can use, or None on the CPU (not sized).

    On CUDA: the driver's free memory plus the memory PyTorch's caching allocator has
    reserved but holds no tensor in (it is reused before the driver is asked again).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation can use: :func:`free_memory` on CUDA; on the CPU the kernel's
    ``MemAvailable`` (Linux), else None (unknown)."""
    if torch.device(device).type == "cuda":
        return free_memory(device)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_memory(device: torch.device | str) -> int | None:
    """The memory of a CUDA device in bytes, or None on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[1])


def release_cached(device: torch.device | str) -> None:
    """Give the blocks PyTorch's caching allocator holds unused on ``device`` back to the driver."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def device_info(device: torch.device | str) -> dict[str, str | None]:
    """What a run report says about the device it used: its name, and the GPU's model on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"device": str(device), "cuda_device": None}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"device": f"cuda:{index}", "cuda_device": torch.cuda.get_device_name(index)}


def format_gb(n: float | None) -> str:
    """Bytes as GB with two decimals ('unknown' for None)."""
    return "unknown" if n is None or not math.isfinite(n) else f"{n / 1e9:.2f} GB"
