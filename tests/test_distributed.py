"""``scot eval`` and ``scot search-layers`` under torchrun: sharding, identical figures, faults.

The launches run ``python -m torch.distributed.run`` (torchrun) with two CPU processes of
one thread each (gloo) on the generated photo pairs, so they need no data.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO
from scot.cli import app
from scot.distributed.launch import Launch, backend_for, launch_from_env, rank_device
from scot.distributed.sharding import images_per_shard, round_robin, shard_by_images
from scot.errors import ScotError

runner = CliRunner()

EVAL_PAIRS = "12"
LAUNCH_SECONDS = 120  # a launch of these sizes takes about 10 s on two shared cores


# ---------------------------------------------------------------------------------------
# Sharding and the launch environment (no processes)


def _willow_like(classes: int, images: int) -> list[tuple[tuple[int, str], tuple[int, str]]]:
    """Every ordered pair among ``images`` images of each of ``classes`` classes, class by class."""
    names = [chr(ord("a") + i) for i in range(images)]
    return [((c, a), (c, b)) for c in range(classes) for a in names for b in names if a != b]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_partition_the_pairs_evenly_and_repeatably(world):
    pairs = _willow_like(10, 5)
    shards = shard_by_images(pairs, world)
    assert len(shards) == world
    assert sorted(i for s in shards for i in s) == list(range(len(pairs)))
    assert all(s == sorted(s) for s in shards)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= len(pairs) // (2 * world) + 1
    assert shard_by_images(pairs, world) == shards  # a restart gets the same split


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_describe_fewer_images_than_round_robin(world):
    pairs = _willow_like(10, 5)
    grouped = sum(images_per_shard(pairs, shard_by_images(pairs, world)))
    dealt = sum(images_per_shard(pairs, round_robin(len(pairs), world)))
    assert dealt == 50 * world  # round robin: every rank sees every image
    assert grouped <= 50 + 5 * (world - 1)  # each cut splits at most one class


def test_shards_balance_the_work_not_the_count():
    pairs = _willow_like(4, 5)  # four classes of 20 pairs
    weights = [3.0 if src[0] == 0 else 1.0 for src, _ in pairs]  # the first class's pairs take 3 times as long
    shards = shard_by_images(pairs, 2, weights)
    assert shards == [list(range(20)), list(range(20, 80))]
    assert shard_by_images(pairs, 2) == [list(range(40)), list(range(40, 80))]


def test_one_class_is_split_where_it_shares_fewest_images():
    pairs = _willow_like(1, 5)  # 20 pairs among 5 images: any half needs at least 4 of them
    assert images_per_shard(pairs, shard_by_images(pairs, 2)) == [4, 5]
    assert shard_by_images(pairs[:1], 3) in ([[0], [], []], [[], [0], []], [[], [], [0]])
    assert shard_by_images([], 2) == [[], []]


def test_launch_environment():
    assert launch_from_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_MAX_RESTARTS": "3", "TORCHELASTIC_RUN_ID": "job"}
    launch = launch_from_env(env)
    assert launch == Launch(3, 4, 1, 2, restart_count=1, max_restarts=3, run_id="job")
    assert launch.restarts_left == 2
    with pytest.raises(ScotError, match="RANK 4 is not in 0..WORLD_SIZE-1"):
        launch_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ScotError, match="LOCAL_RANK is 'x'"):
        launch_from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"})


def test_each_rank_computes_on_its_local_gpu():
    launch = Launch(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert rank_device("cpu", launch) == "cpu" and backend_for("cpu") == "gloo"
    if not torch.cuda.is_available() or torch.cuda.device_count() > 1:
        assert rank_device("cuda", launch) == "cuda:1"
        assert rank_device("cuda:1", launch) == "cuda:1"
    with pytest.raises(ScotError, match="GPU of its local rank") as err:
        rank_device("cuda:0", launch)
    assert err.value.option == "device"
    assert backend_for("cuda:1") == "cpu:gloo,cuda:nccl"


# ---------------------------------------------------------------------------------------
# Launches


def _torchrun(args: list[str], *extra: str, wait: bool = True, timeout: float = LAUNCH_SECONDS):
    """Run ``torchrun --standalone --nproc-per-node 2 [extra] -m scot ARGS`` from the repository."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *extra,
           "-m", "scot", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _eval_args(photo_willow: Path, out: Path) -> list[str]:
    """``scot eval`` on the first pairs; batches of 3 pairs, whose padding makes results depend on the company."""
    return ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone", "efficientnet-lite0",
            "--threads", "1", "--limit", EVAL_PAIRS, "--batch-size", "3", "-o", str(out)]


@pytest.fixture
def one_thread():
    """Run in-process commands with one thread (as each launched rank does), then restore."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_run(photo_willow, tmp_path_factory) -> Path:
    """The run folder of one process (in this process, one thread) on the eval pairs."""
    out = tmp_path_factory.mktemp("single") / "run"
    before = torch.get_num_threads()
    try:
        res = runner.invoke(app, _eval_args(photo_willow, out))
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    return out


def _same_figures(a: Path, b: Path) -> None:
    """Two run folders report the same pairs, PCK tables and charts."""
    assert (a / "per_pair.csv").read_bytes() == (b / "per_pair.csv").read_bytes()
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["status"] == sb["status"] == "complete"
    assert sa["pck"] == sb["pck"] and sa["headline"] == sb["headline"]
    for chart in ("pck_per_class.png", "pck_curve.png"):
        assert (a / chart).read_bytes() == (b / chart).read_bytes(), chart


def test_two_ranks_report_what_one_process_reports(photo_willow, single_run, tmp_path):
    out = tmp_path / "run"
    res = _torchrun(_eval_args(photo_willow, out))
    assert res.returncode == 0, res.stderr[-3000:]
    _same_figures(single_run, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and json.loads((single_run / "summary.json").read_text())["world_size"] == 1
    sharding = summary["sharding"]
    assert sum(sharding["pairs_per_rank"]) == int(EVAL_PAIRS) and all(n % 3 == 0 for n in sharding["pairs_per_rank"])
    assert len(sharding["estimated_work_per_rank"]) == 2
    assert sharding["images_described_per_rank"] == sharding["images_per_rank"]  # each image once per rank
    assert len(sharding["round_robin_images_per_rank"]) == 2
    rows = [json.loads(line) for r in (0, 1) for line in (out / f"pairs.rank{r}.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows if "index" in r) == list(range(int(EVAL_PAIRS)))
    assert not (out / "pairs.jsonl").exists()
    # rank 0 prints, once: the split, the table and the images each rank described
    assert res.stdout.count("mean over pairs") == 1
    assert f"images per rank {', '.join(map(str, sharding['images_per_rank']))}" in res.stdout
    assert "images described per rank" in res.stdout


def test_two_ranks_search_like_one_process(photo_willow, tmp_path, one_thread):
    common = ["search-layers", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
              "efficientnet-lite0", "--threads", "1", "--limit", "6", "--base-ids", "3", "--candidates", "5,8",
              "--max-size", "2"]
    res = runner.invoke(app, [*common, "-o", str(tmp_path / "one.json")])
    assert res.exit_code == 0, res.output
    resume = tmp_path / "resume.json"
    launched = _torchrun([*common, "-o", str(tmp_path / "two.json"), "--resume-file", str(resume)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["hyperpixel_ids"] == one["hyperpixel_ids"]
    assert [(r["hyperpixel_ids"], r["pck"]) for r in two["results"]] == [(r["hyperpixel_ids"], r["pck"]) for r in one["results"]]
    assert {tuple(r["hyperpixel_ids"]) for r in one["results"]} == {(3,), (3, 5), (3, 8)}
    assert set(json.loads(resume.read_text())["evaluated"]) == {"3", "3,5", "3,8"}  # written by rank 0


def _worker_of(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launcher's worker process with ``RANK=rank`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher.pid and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def _kill_rank_after(launcher: subprocess.Popen, journal: Path, lines: int, rank: int = 1) -> tuple[float, str]:
    """SIGKILL the launcher's worker of ``rank`` once ``journal`` has ``lines`` lines; wait for the launcher.

    Returns the time of the kill (``time.monotonic()``) and the launcher's stderr.
    """
    killed_at = None
    try:
        deadline = time.monotonic() + LAUNCH_SECONDS
        while killed_at is None and launcher.poll() is None and time.monotonic() < deadline:
            if journal.is_file() and journal.read_text().count("\n") >= lines:
                pid = _worker_of(launcher, rank)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
            time.sleep(0.02)
        _, stderr = launcher.communicate(timeout=LAUNCH_SECONDS)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert killed_at is not None, f"rank {rank} finished before it could be killed"
    return killed_at, stderr


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the worker processes through /proc")


@needs_proc
def test_a_killed_rank_ends_the_run_with_one_line_and_resume_finishes_it(photo_willow, single_run, tmp_path):
    out = tmp_path / "run"
    launcher = _torchrun(_eval_args(photo_willow, out), wait=False)
    killed_at, stderr = _kill_rank_after(launcher, out / "pairs.rank1.jsonl", 2)
    assert launcher.returncode != 0 and time.monotonic() - killed_at < 30
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "rank 1 of 2" in errors[0] and "died" in errors[0] and f"--resume -o {out}" in errors[0]
    partial = json.loads((out / "summary.json").read_text())
    assert partial["status"] == "interrupted" and 2 <= partial["pairs_scored"] < int(EVAL_PAIRS)

    res = _torchrun([*_eval_args(photo_willow, out), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    _same_figures(single_run, out)
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert [int(r["index"]) for r in rows] == list(range(int(EVAL_PAIRS)))


@needs_proc
def test_torchrun_restart_continues_each_shard(photo_willow, single_run, tmp_path):
    out = tmp_path / "run"
    launcher = _torchrun(_eval_args(photo_willow, out), "--max-restarts", "1", wait=False)
    _kill_rank_after(launcher, out / "pairs.rank1.jsonl", 2)
    assert launcher.returncode == 0
    _same_figures(single_run, out)
    # the restarted rank 1 kept the pairs it had journaled and scored only the rest of its shard
    records = [json.loads(line) for line in (out / "pairs.rank1.jsonl").read_text().splitlines()]
    indices = [r["index"] for r in records if "index" in r]
    assert len(indices) == len(set(indices)) == json.loads((out / "summary.json").read_text())["sharding"]["pairs_per_rank"][1]
    assert json.loads((out / "launch.json").read_text())["restart_count"] == 1
