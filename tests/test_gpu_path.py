"""The CUDA path on a machine without a GPU.

* **Fake CUDA**: the matcher runs on ``FakeTensorMode`` tensors that claim to live on
  ``cuda:0`` (image features moved there by ``Hyperpixels.to``), with host-side boxes,
  weights and keypoints.  A dispatch mode inside the fake mode records every operation
  whose tensors sit on different devices, every read of a device value and every
  device-to-host copy; the deliberate copies go through ``scot.device.to_host``, replaced
  here by a stub that counts them and hands back host constants.
* **Mocked CUDA**: ``torch.cuda``'s queries answer as a one- or two-GPU machine would.
* **Precision**: the settings SCOT applies, and their exact restoration (in a fresh
  interpreter, since a leaf once written can never be unset again).
* One test needs a real GPU (``-m cuda``): CPU and CUDA agree on the keypoints.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch._subclasses import FakeTensorMode
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import scot.device
import scot.matcher
from conftest import PHOTO_CATEGORY, REPO, one_line_error
from scot import SCOT, SCOTConfig
from scot.backbones import build_backbone
from scot.cache import DEVICE_SHARE, LRUCache
from scot.errors import ScotError
from scot.device import resolve_device
from scot.features import NetworkView
from scot.matcher import Matcher
from scot.precision import fp32_precision, get
from scot.timing import Clock

aten = torch.ops.aten
GB = 10**9
IMAGES = ("photo", "zoomed", "small_mirrored", "squashed")  # generated photo variants of four sizes
PAIRS = ((0, 1), (2, 3), (1, 2))  # a batch of three pairs of different sizes
SIDES = {"small": 96, "large": 160}


# ---------------------------------------------------------------------------------------
# Images described on the CPU, to be moved onto the fake device
def _config(side: int, **overrides: Any) -> SCOTConfig:
    base = dict(backbone="efficientnet-lite0", preset="pfwillow", image_side=side, cam_scales=(1.0,),
                feature_scales=(1.0,))
    return SCOTConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet-lite0", "random:3")


@pytest.fixture(scope="module")
def described(lite0, photo_willow) -> dict[tuple[str, str], list]:
    """(factorize, size) -> the four images' CPU hyperpixels."""
    folder = photo_willow / PHOTO_CATEGORY
    out = {}
    for factorize in ("always", "never"):
        for size, side in SIDES.items():
            model = SCOT(_config(side), backbone=lite0, factorize=factorize)
            out[factorize, size] = [model.extract(folder / f"{name}.png") for name in IMAGES]
    return out


def _items(images: list, batch: int) -> list[tuple]:
    """``batch`` (src, trg, keypoints) items, keypoints at a few source box corners."""
    out = []
    for i, j in PAIRS[:batch]:
        s, t = images[i], images[j]
        kps = (s.boxes[:: max(1, s.n // 5), :2].clamp_min(0) / s.ratio).tolist()
        out.append((s, t, kps))
    return out


# ---------------------------------------------------------------------------------------
# A machine with CUDA GPUs, as far as torch.cuda's queries go
class FakeMachine:
    """``torch.cuda`` answering as a machine with ``gpus`` GPUs of ``total`` bytes, ``free`` of them free."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: int = 1, free: int = 8 * GB, total: int = 16 * GB) -> None:
        self.free, self.total = free, total
        self.synchronized: list[Any] = []
        # FakeTensorMode asks torch.cuda.is_available() whether it may create real CUDA constants
        monkeypatch.setattr(FakeTensorMode, "avoid_device_init", property(lambda self: True))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: self.synchronized.append(device))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, self.total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Fake GPU {device}")


class DeviceAudit(TorchDispatchMode):
    """Records, inside a FakeTensorMode, what would cross between devices or wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []  # operations on tensors of two devices (0-dim host scalars aside)
        self.reads: list[str] = []  # values of device tensors read by Python
        self.copies: list[str] = []  # device-to-host copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "aten":  # a composite operation (aten.to) is audited through what it decomposes into
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is aten._local_scalar_dense.default:
            if tensors[0].device.type != "cpu":
                self.reads.append(str(func))
        elif func is aten._to_copy.default:
            target = kwargs.get("device") or tensors[0].device
            if tensors[0].device.type != "cpu" and torch.device(target).type == "cpu":
                self.copies.append(str(func))
        elif func is aten.copy_.default:
            if args[1].device.type != "cpu" and args[0].device.type == "cpu":
                self.copies.append(str(func))
        else:
            devices = {t.device for t in tensors if t.device.type != "cpu" or t.dim() > 0}
            if len(devices) > 1:
                self.mixed.append(f"{func} on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


class FakeRun:
    """What one fake-device run saw: the audit and the calls of the host-copy helper."""

    def __init__(self, mode: FakeTensorMode) -> None:
        self.mode = mode
        self.flag = True  # what every boolean read back holds
        self.audit = DeviceAudit()
        self.host_copies: list[list[str]] = []  # per to_host call, the devices of its tensors
        self.backbone: Any = None

    def to_host(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Counts the call; returns host constants (``flag``, 0, 1.0) the pipeline can read."""
        self.host_copies.append([t.device.type for t in tensors])
        out = []
        for t in tensors:
            with unset_fake_temporarily():
                if t.dtype == torch.bool:
                    value = torch.full(t.shape, self.flag)
                elif t.is_floating_point():
                    value = torch.ones(t.shape, dtype=t.dtype)
                else:
                    value = torch.zeros(t.shape, dtype=t.dtype)
            out.append(self.mode.fake_tensor_converter.from_real_tensor(self.mode, value, make_constant=True))
        return tuple(out)

    def check_clean(self) -> None:
        assert self.audit.mixed == [], self.audit.mixed[:5]
        assert self.audit.reads == [], self.audit.reads[:5]
        assert self.audit.copies == [], self.audit.copies[:5]
        assert all(set(devices) == {"cuda"} for devices in self.host_copies), self.host_copies


@contextmanager
def fake_cuda_run(backbone=None) -> Iterator[FakeRun]:
    """A FakeTensorMode with a :class:`DeviceAudit` inside, and ``scot.device.to_host`` stubbed;
    ``run.backbone`` is a copy of ``backbone`` for a model built inside."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    run = FakeRun(mode)
    run.backbone = None if backbone is None else copy.deepcopy(backbone)
    real = scot.device.to_host
    scot.device.to_host = run.to_host
    try:
        with mode, run.audit:
            yield run
    finally:
        scot.device.to_host = real


def _fake_model(run: FakeRun, config: SCOTConfig, factorize: str = "auto") -> SCOT:
    """A SCOT on the fake CUDA device (inside :func:`fake_cuda_run`), with the run's backbone."""
    return SCOT(config, backbone=run.backbone, factorize=factorize)


CONFIGS = {
    "one-way": dict(symmetric=False),
    "two-way": dict(symmetric=True),
    "low-memory": dict(low_memory=True, symmetric=False, low_memory_rows=300),
    "log-domain": dict(sinkhorn_mode="log", symmetric=False),
    "tolerance": dict(sinkhorn_tol=1e-3, sinkhorn_iters=20, symmetric=True),
    "subpixel": dict(subpixel=3, symmetric=False, transfer="median"),
    "mutual": dict(mutual=True, symmetric=True, transfer="weighted"),
    "no-ot": dict(ot=False, symmetric=True),
}
# host copies a batch of B pairs may take: a + b B (independent of the hyperpixel counts)
BOUNDS = {"one-way": (1, 0), "two-way": (1, 0), "low-memory": (0, 2), "log-domain": (2, 0), "tolerance": (6, 0),
          "subpixel": (1, 0), "mutual": (1, 0), "no-ot": (1, 0)}


def _run_fake(lite0, described, name: str, factorize: str, size: str, batch: int, topk: int = 0,
              keep_plan: bool = False) -> tuple[FakeRun, list]:
    items = _items(described[factorize, size], batch)
    with fake_cuda_run(lite0) as run:
        model = _fake_model(run, _config(SIDES[size], device="cuda", **CONFIGS[name]), factorize)
        assert model.device == torch.device("cuda", 0)
        results = model.match_batch(items, keep_plan=keep_plan, topk=topk)
    return run, results


# ---------------------------------------------------------------------------------------
# Fake-device runs
@pytest.mark.parametrize("factorize", ["always", "never"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_match_batch_on_a_fake_gpu_never_mixes_devices(monkeypatch, lite0, described, name, factorize):
    FakeMachine(monkeypatch)
    run, results = _run_fake(lite0, described, name, factorize, "small", 3, topk=2 if name == "one-way" else 0,
                             keep_plan=name == "two-way")
    run.check_clean()
    a, b = BOUNDS[name]
    assert 1 <= len(run.host_copies) <= a + b * 3
    images = described[factorize, "small"]
    assert len(results) == 3
    for (i, j), res in zip(PAIRS, results):
        s, t = images[i], images[j]
        assert res.best.device.type == "cpu" and tuple(res.best.shape) == (s.n,)
        assert res.best_confidence.device.type == "cpu" and res.transferred.device.type == "cpu"
        assert tuple(res.transferred.shape) == (len(_items(images, 3)[PAIRS.index((i, j))][2]), 2)
        if res.votes is not None:
            assert res.votes.device.type == "cuda" and tuple(res.votes.shape) == (s.n, t.n)
        if name == "one-way":
            assert res.topk_index.device.type == "cpu" and tuple(res.topk_index.shape) == (s.n, 2)
        if name == "subpixel":
            assert res.target_tl.device.type == "cpu"
        if name == "mutual":
            assert res.usable.device.type == "cpu" and res.usable.dtype == torch.bool


@pytest.mark.parametrize("name", ["one-way", "two-way", "log-domain", "tolerance", "low-memory"])
def test_host_copies_per_batch_do_not_grow_with_the_image_size(monkeypatch, lite0, described, name):
    FakeMachine(monkeypatch)
    counts = {}
    for size in SIDES:
        for batch in (1, 3):
            run, _ = _run_fake(lite0, described, name, "always", size, batch)
            run.check_clean()
            counts[size, batch] = len(run.host_copies)
    small, large = described["always", "small"][0].n, described["always", "large"][0].n
    assert large > 2 * small  # the two sizes differ enough to show a dependence
    a, b = BOUNDS[name]
    for batch in (1, 3):
        assert counts["small", batch] == counts["large", batch], counts
        assert counts["small", batch] <= a + b * batch, counts
    if b == 0:
        assert counts["small", 1] == counts["small", 3], counts


def test_sinkhorn_tolerance_reads_the_gpu_every_few_iterations(monkeypatch):
    from scot.ot import CHECK_EVERY, sinkhorn

    FakeMachine(monkeypatch)
    with fake_cuda_run() as run:
        run.flag = False  # never converged: every check point is reached
        cost = torch.rand(2, 30, 40, device="cuda")
        mu, nu = torch.full((2, 30), 1 / 30), torch.full((2, 40), 1 / 40)  # host marginals: moved by sinkhorn
        result = sinkhorn(cost, mu, nu, 0.05, num_iters=20, tol=1e-9)
    run.check_clean()
    assert CHECK_EVERY == 8 and len(run.host_copies) == 3  # iterations 8, 16 and the last
    assert result.plan.device.type == "cuda" and result.iterations == 0  # the stub's counts


def test_a_converged_problem_is_frozen_while_the_batch_goes_on():
    from scot.ot import sinkhorn
    from scot.votes import scot_votes

    g = torch.Generator().manual_seed(1)
    costs = torch.stack([torch.rand(20, 30, generator=g) * 0.2, torch.rand(20, 30, generator=g)])
    mu, nu = torch.rand(2, 20, generator=g) + 0.5, torch.rand(2, 30, generator=g) + 0.5
    mu, nu = mu / mu.sum(1, keepdim=True), nu / nu.sum(1, keepdim=True)
    for method in ("plain", "log"):
        batched = sinkhorn(costs, mu, nu, 0.05, num_iters=500, tol=1e-4, method=method)
        alone = [sinkhorn(costs[i], mu[i], nu[i], 0.05, num_iters=500, tol=1e-4, method=method) for i in range(2)]
        assert alone[0].iterations != alone[1].iterations  # they stop at different iterations
        assert batched.iterations == max(a.iterations for a in alone)
        for i in range(2):
            torch.testing.assert_close(batched.plan[i], alone[i].plan, rtol=1e-5, atol=1e-10)
    # the eps policy per problem: only the one whose kernel underflows is solved again at a doubled eps
    costs[1] = 0.9 + 0.1 * costs[1]
    votes, stats = scot_votes(costs, mu, nu, eps=0.005, exp2=0.5)
    assert stats.eps_used == [0.005, 0.02]
    alone_votes, _ = scot_votes(costs[0], mu[0], nu[0], eps=0.005, exp2=0.5)
    torch.testing.assert_close(votes[0], alone_votes, rtol=1e-5, atol=1e-10)


def test_to_host_copies_once_per_device(monkeypatch):
    """The real helper packs every device tensor into one buffer: one copy, dtypes and shapes kept."""
    FakeMachine(monkeypatch)
    audit = DeviceAudit()
    with FakeTensorMode(allow_non_fake_inputs=True), audit:
        parts = (torch.zeros(5, dtype=torch.long, device="cuda"), torch.ones(2, 3, device="cuda"),
                 torch.ones((), dtype=torch.bool, device="cuda"), torch.ones(4))
        host = scot.device.to_host(*parts)
    assert len(audit.copies) == 1 and audit.reads == []
    assert [h.device.type for h in host] == ["cpu"] * 4
    assert [(h.dtype, tuple(h.shape)) for h in host] == [(p.dtype, tuple(p.shape)) for p in parts]
    real = (torch.tensor([3, 2**40]), torch.tensor([[0.1, -2.5e-30]]), torch.tensor([True, False]))
    for got, want in zip(scot.device.to_host(*real), real):
        assert got is want  # host tensors are not copied


# ---------------------------------------------------------------------------------------
# Memory: batch sizing, out-of-memory, the cache on a GPU
def test_batches_are_sized_from_the_free_memory(monkeypatch, lite0, described):
    machine = FakeMachine(monkeypatch)
    images = described["always", "small"]
    items = _items(images, 3)
    with fake_cuda_run(lite0) as run:
        model = _fake_model(run, _config(96, device="cuda", symmetric=False), "always")
        n = max(s.n for s, _, _ in items)
        m = max(t.n for _, t, _ in items)
        moved = max(model.matcher._moved_bytes(s, t) for s, t, _ in items)
        one = model.matcher.pair_bytes(n, m, False, moved)
        machine.free = int((1.5 * one + scot.matcher._DEVICE_BLOCK_BYTES) / (1 - scot.matcher._DEVICE_RESERVE))
        assert model.matcher.batch_limit([(s, t) for s, t, _ in items]) == 1
        model.match_batch(items)
        assert len(run.host_copies) == 3  # one batch per pair
        machine.free = 8 * GB
        run.host_copies.clear()
        model.release_memory()
        model.match_batch(items)
        assert len(run.host_copies) == 1  # all three together
    run.check_clean()


def _same_results(got: list, want: list) -> None:
    for a, b in zip(got, want):
        assert torch.equal(a.best, b.best)
        torch.testing.assert_close(a.transferred, b.transferred, rtol=0, atol=1e-4)


def test_out_of_memory_halves_the_batch(monkeypatch, lite0, described):
    images = described["always", "small"]
    items = _items(images, 3) + _items(images, 1)
    model = SCOT(_config(96, symmetric=True), backbone=lite0, factorize="always")
    want = model.match_batch(items)
    batches: list[int] = []
    together, fill = Matcher._together, scot.matcher.Correlation.fill

    def record(self, pairs, *args, **kwargs):
        batches.append(len(pairs))
        return together(self, pairs, *args, **kwargs)

    def fail_once(self, out, *args, **kwargs):
        if len(batches) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return fill(self, out, *args, **kwargs)

    monkeypatch.setattr(Matcher, "_together", record)
    monkeypatch.setattr(scot.matcher.Correlation, "fill", fail_once)
    got = model.match_batch(items)
    assert batches == [4, 2, 2]
    _same_results(got, want)


def test_a_pair_that_does_not_fit_alone_suggests_low_memory(monkeypatch, lite0, described):
    images = described["always", "small"]

    def fail(self, out, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scot.matcher.Correlation, "fill", fail)
    model = SCOT(_config(96, symmetric=False), backbone=lite0, factorize="always")
    with pytest.raises(ScotError) as err:
        model.match_batch(_items(images, 2))
    assert err.value.option == "low_memory" and "\n" not in str(err.value)
    assert "--low-memory" in str(err.value) and "does not fit" in str(err.value)


def test_a_pair_that_cannot_stream_names_the_options_instead(monkeypatch, lite0, described):
    def fail(self, out, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scot.matcher.Correlation, "fill", fail)
    model = SCOT(_config(96, symmetric=False, subpixel=3), backbone=lite0, factorize="always")
    with pytest.raises(ScotError) as err:
        model.match_batch(_items(described["always", "small"], 1))
    assert err.value.option == "image_side" and "\n" not in str(err.value)
    assert "cannot stream subpixel" in str(err.value) and "--low-memory" not in str(err.value)


def test_the_cache_keeps_gpu_images_below_a_share_of_the_gpu(monkeypatch):
    FakeMachine(monkeypatch, total=16 * GB)
    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0), size=2 * GB)
    on_cpu = types.SimpleNamespace(device=torch.device("cpu"), size=2 * GB)
    cache: LRUCache = LRUCache(10 * GB, lambda v: v.size)
    assert cache.limit(on_gpu) == int(DEVICE_SHARE * 16 * GB) and cache.limit(on_cpu) == 10 * GB
    for k in range(4):
        cache.put(("gpu", k), on_gpu)
    assert len(cache) == 2 and cache.bytes <= DEVICE_SHARE * 16 * GB  # four would exceed a quarter of the GPU
    host: LRUCache = LRUCache(10 * GB, lambda v: v.size)
    for k in range(4):
        host.put(("cpu", k), on_cpu)
    assert len(host) == 4


def test_gpu_images_count_their_device_bytes(monkeypatch, described):
    FakeMachine(monkeypatch)
    image = described["always", "small"][0]
    assert image.device_nbytes() == 0 and image.nbytes() > image.operand_nbytes() > 0
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True), DeviceAudit():
        moved = image.to("cuda")
        moved.operand(reverse=True)
        assert moved.device_nbytes() == image.operand_nbytes()
        assert moved.nbytes() == image.nbytes()


def test_search_keeps_the_backbone_maps_on_the_host(monkeypatch):
    from scot.search import LayerSearch

    FakeMachine(monkeypatch)
    with FakeTensorMode(allow_non_fake_inputs=True):
        view = NetworkView({2: torch.zeros(1, 8, 6, 5, device="cuda"), 9: torch.zeros(1, 16, 3, 3, device="cuda")},
                           torch.zeros(20, 24, device="cuda"), [1, 2], (24, 20), 1.0, (24, 20))
        extractor = types.SimpleNamespace(view=lambda path, ids, flip=False: view)
        search = LayerSearch(types.SimpleNamespace(extractor=extractor, device=torch.device("cuda", 0)), None, "bbox", [2, 9])
        kept = search.view(Path("image.png"), False)
        assert {m.device.type for m in kept.maps.values()} == {"cpu"} and kept.cam.device.type == "cpu"
        back = kept.to("cuda", [9])
        assert list(back.maps) == [9] and back.maps[9].device.type == "cuda"


# ---------------------------------------------------------------------------------------
# Mocked CUDA: devices, pinning, timers
def test_cuda_index_beyond_the_gpus_is_one_line(monkeypatch):
    FakeMachine(monkeypatch, gpus=1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu:0") == torch.device("cpu")
    for name, fragment in (("cuda:1", "1 CUDA GPU (cuda:0)"), ("cuda:x", "not a device"), ("mps", "not supported")):
        with pytest.raises(ScotError) as err:
            resolve_device(name)
        assert err.value.option == "device" and fragment in str(err.value) and "\n" not in str(err.value)
    from typer.testing import CliRunner

    from scot.cli import app

    one_line_error(CliRunner().invoke(app, ["bench", "synthetic", "--n", "64", "--device", "cuda:1"]), "--device",
                   "cuda:1", "does not exist")


def test_no_gpu_means_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ScotError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_the_cpu_path_never_pins_memory(monkeypatch, lite0, photo_willow):
    def refuse(*args, **kwargs):
        raise AssertionError("pin_memory on the CPU path")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    folder = photo_willow / PHOTO_CATEGORY
    model = SCOT(_config(96, symmetric=True, subpixel=3, mutual=True), backbone=lite0)
    result = model(folder / "photo.png", folder / "zoomed.png", keypoints=[[100.0, 120.0]])
    assert result.transferred.shape == (1, 2)


def test_timers_synchronise_the_models_own_gpu(monkeypatch, lite0, described):
    machine = FakeMachine(monkeypatch, gpus=2)
    items = _items(described["always", "small"], 2)
    with fake_cuda_run(lite0) as run:
        model = _fake_model(run, _config(96, device="cuda:1", symmetric=False), "always")
        results = model.match_batch(items)
    run.check_clean()
    assert model.device == torch.device("cuda", 1)
    assert set(results[0].timings) == {"cost", "ot", "rhm", "transfer"}
    assert len(machine.synchronized) >= 5  # the clock's start and its four laps
    assert {torch.device(d) for d in machine.synchronized} == {torch.device("cuda", 1)}
    machine.synchronized.clear()
    from scot.bench.measure import timed

    timed(lambda: None, "cuda:1")
    Clock({}, "cuda:1").lap("stage")
    Clock(None, "cuda:1").lap("stage")  # no sink: nothing to time, nothing to wait for
    assert [torch.device(d) for d in machine.synchronized] == [torch.device("cuda", 1)] * 4


def test_run_reports_name_the_gpu_in_use(monkeypatch, lite0):
    FakeMachine(monkeypatch, gpus=2)
    with fake_cuda_run(lite0) as run:
        model = _fake_model(run, _config(96, device="cuda:1"))
    assert model.device_info() == {"device": "cuda:1", "cuda_device": "Fake GPU 1"}
    cpu = SCOT(_config(96), backbone=lite0)
    assert cpu.device_info() == {"device": "cpu", "cuda_device": None}


# ---------------------------------------------------------------------------------------
# Precision
@pytest.mark.parametrize("tf32", [False, True])
def test_scot_computes_at_the_configured_precision(monkeypatch, lite0, described, tf32):
    FakeMachine(monkeypatch)
    seen: list[tuple[str, str, str]] = []
    fill = scot.matcher.Correlation.fill

    def record(self, out, *args, **kwargs):
        seen.append((get("cuda", "matmul"), get("cuda", "conv"), get("mkldnn", "matmul")))
        return fill(self, out, *args, **kwargs)

    monkeypatch.setattr(scot.matcher.Correlation, "fill", record)
    before = scot.precision.snapshot()
    items = _items(described["always", "small"], 2)
    with fake_cuda_run(lite0) as run:
        model = _fake_model(run, _config(96, device="cuda", tf32=tf32, symmetric=False), "always")
        model.match_batch(items)
    want = "tf32" if tf32 else "ieee"
    assert seen and set(seen) == {(want, want, "none")}
    assert scot.precision.snapshot() == before

    observed: list[str] = []

    def observe(*args, **kwargs):
        observed.append(get("cuda", "conv"))
        return "view"

    monkeypatch.setattr(scot.features, "observe", observe)
    cuda_backbone = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(device=torch.device("cuda", 0))]))
    extractor = scot.features.HyperpixelExtractor(cuda_backbone, model.config)
    assert extractor.view(torch.rand(3, 40, 50)) == "view" and observed == [want]
    assert get("cuda", "conv") == before["cuda.conv"]


def test_tf32_needs_a_cuda_device():
    with pytest.raises(ScotError) as err:
        SCOTConfig(tf32=True)
    assert err.value.option == "tf32"


_STATE_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import torch
    from scot.precision import NODES, fp32_precision, get
    from torch._C import _set_fp32_precision_setter as put

    def probe(parents):
        """Every node shown, alone and under each value of each parent; parents restored to their own values."""
        out = {"shown": {f"{b}.{o}": get(b, o) for b, o in NODES}}
        for parent, own in parents.items():
            b, o = parent.split(".")
            for value in ("ieee", "tf32"):
                put(b, o, value)
                out[f"{parent}={value}"] = {f"{x}.{y}": get(x, y) for x, y in NODES}
            put(b, o, own)
        return out

    scenario = sys.argv[1]
    parents = {"generic.all": "none", "cuda.all": "none", "mkldnn.all": "none"}
    if scenario == "new-api-first":
        torch.backends.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        parents["generic.all"] = "ieee"
    elif scenario == "parents-set":
        torch.backends.cudnn.fp32_precision = "tf32"
        torch.backends.mkldnn.fp32_precision = "bf16"  # PyTorch writes the generic node here
        put("mkldnn", "all", "ieee")
        parents.update({"generic.all": "bf16", "cuda.all": "tf32", "mkldnn.all": "ieee"})
    elif scenario == "legacy-first":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = True
    report = {"before": probe(parents)}
    for tf32 in (True, False):
        with fp32_precision("cuda", tf32=tf32):
            report[f"inside tf32={tf32}"] = {f"{b}.{o}": get(b, o) for b, o in NODES}
            with fp32_precision("cuda", tf32=tf32):  # nested, same precision
                pass
        report[f"after tf32={tf32}"] = probe(parents)
    if scenario == "legacy-first":  # the legacy switches still read back (no mix was introduced)
        report["legacy"] = [torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32]
    print(json.dumps(report))
''')


@pytest.mark.parametrize("scenario", ["defaults", "new-api-first", "parents-set", "legacy-first"])
def test_precision_settings_are_restored_exactly(scenario):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _STATE_SCRIPT, scenario], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    for tf32 in (True, False):
        assert report[f"after tf32={tf32}"] == report["before"], tf32
        inside = report[f"inside tf32={tf32}"]
        want = "tf32" if tf32 else "ieee"
        assert inside["cuda.matmul"] == want and inside["cuda.conv"] == want
        assert inside["mkldnn.matmul"] in ("ieee", "none") and inside["mkldnn.conv"] in ("ieee", "none")
    if scenario == "defaults":  # cuDNN's unset conv leaf shows tf32 and still follows its parent afterwards
        assert report["before"]["shown"]["cuda.conv"] == "tf32"
        assert report["before"]["cuda.all=ieee"]["cuda.conv"] == "ieee"
    if scenario == "legacy-first":
        assert report["legacy"] == [False, True]


def test_concurrent_calls_share_a_precision_and_wait_for_another():
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with fp32_precision("cuda", tf32=False):
            order.append("fp32 in")
            inside.set()
            release.wait(10)
            order.append("fp32 out")

    def same() -> None:
        with fp32_precision("cuda", tf32=False):
            order.append("second fp32 in")

    def other() -> None:
        with fp32_precision("cuda", tf32=True):
            order.append("tf32 in")
            assert get("cuda", "matmul") == "tf32"

    first = threading.Thread(target=hold)
    first.start()
    inside.wait(10)
    threads = [threading.Thread(target=same), threading.Thread(target=other)]
    for t in threads:
        t.start()
    threads[0].join(10)
    assert order == ["fp32 in", "second fp32 in"]  # the same precision does not wait
    release.set()
    for t in [first, threads[1]]:
        t.join(10)
    assert order.index("tf32 in") > order.index("fp32 out")
    with fp32_precision("cuda", tf32=False):
        with pytest.raises(RuntimeError, match="nested"):
            with fp32_precision("cuda", tf32=True):
                pass


# ---------------------------------------------------------------------------------------
# A real GPU (opt-in: pytest -m cuda)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_transfer_the_same_keypoints(photo_rows):
    row = photo_rows[0]
    config = SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", tf32=False)
    cpu = SCOT(config)
    gpu = SCOT(config.replace(device="cuda"), backbone=copy.deepcopy(cpu.backbone))
    want = cpu(row["src"], row["trg"], keypoints=row["src_kps"])
    got = gpu(row["src"], row["trg"], keypoints=row["src_kps"])
    assert got.transferred.device.type == "cpu"
    assert (got.transferred - want.transferred).abs().max() <= 1e-3
