"""Nothing lost, nothing mixed: claims on results, results written as units, full disks and
read-only folders, and ``--skip-existing`` over results of other settings.

The claim tests race real processes and threads; the disk tests use small tmpfs mounts
(root only, skipped otherwise).  Images are the generated sample-photo pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from scot import SCOT, SCOTConfig, ScotError
from scot.cli import app
from scot.outputs import Claim, Holder, Job, Outputs, Skipped, match_jobs, plan_outputs, try_claim, write_match
from scot.outputs.claims import claim_path

runner = CliRunner()
LITE = ["--backbone", "efficientnet-lite0", "--no-plot"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> SCOT:
    return SCOT(SCOTConfig(backbone="efficientnet-lite0"))


@pytest.fixture(scope="module")
def pair(photo_rows, tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("claim-images")
    shutil.copy(photo_rows[0]["src"], folder / "a.png")
    shutil.copy(photo_rows[0]["trg"], folder / "b.png")
    return str(folder / "a.png"), str(folder / "b.png")


def _leftovers(folder: Path) -> list[str]:
    """Hidden files a write or a claim may leave: parts, temporaries, claims."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------
# the claim itself
def test_a_claim_is_exclusive_names_its_holder_and_is_released(tmp_path):
    out = tmp_path / "r.json"
    mine = try_claim(out, {"source": "a", "target": "b"})
    assert isinstance(mine, Claim) and claim_path(out).is_file()
    other = try_claim(out, {"source": "x", "target": "y"})  # another open file: refused like another process
    assert isinstance(other, Holder)
    assert (other.pid, other.inputs) == (os.getpid(), {"source": "a", "target": "b"})
    assert f"pid {os.getpid()} on host " in other.describe()
    mine.release()
    mine.release()  # idempotent
    assert not claim_path(out).exists()
    again = try_claim(out, {})
    assert isinstance(again, Claim)
    again.release()


def test_threads_racing_for_one_claim_get_it_once(tmp_path):
    out, start, won = tmp_path / "r.json", threading.Barrier(12), []

    def race() -> None:
        start.wait()
        got = try_claim(out, {})
        if isinstance(got, Claim):
            won.append(got)

    threads = [threading.Thread(target=race) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    won[0].release()


HOLD = """
import json, sys, time
from pathlib import Path
from scot.outputs import Claim, try_claim
got = try_claim(Path(sys.argv[1]), json.loads(sys.argv[2]))
print("won" if isinstance(got, Claim) else "lost", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _holder(out: Path, inputs: dict, seconds: float) -> subprocess.Popen:
    """A process that claims ``out`` for ``inputs``, prints whether it won, and holds on."""
    return subprocess.Popen([sys.executable, "-c", HOLD, str(out), json.dumps(inputs), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_processes_racing_for_one_claim_get_it_once(tmp_path):
    out = tmp_path / "r.json"
    procs = [_holder(out, {"source": str(k)}, 600) for k in range(6)]  # each holds on until all have answered
    try:
        answers = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(answers) == ["lost"] * 5 + ["won"], answers


def test_the_claim_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "r.json"
    proc = _holder(out, {"source": "killed"}, 600)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "won"
        held = try_claim(out, {})
        assert isinstance(held, Holder) and held.pid == proc.pid and held.inputs == {"source": "killed"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert claim_path(out).exists()  # left behind by the killed process ...
    got = try_claim(out, {})
    assert isinstance(got, Claim)  # ... and taken over
    got.release()
    assert not claim_path(out).exists()


def test_without_file_locks_the_claim_record_decides(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): a live process's claim holds, another host's
    holds, and a dead process's claim on this host is taken over."""
    import errno
    import fcntl
    import socket

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "r.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    for pid, host, held in ((os.getppid(), here, True), (dead.pid, "elsewhere", True), (dead.pid, here, False)):
        claim_path(out).write_text(json.dumps({"pid": pid, "host": host, "since": "then", "inputs": {}}))
        got = try_claim(out, {"source": "a"})
        assert isinstance(got, Holder if held else Claim), (pid, host, got)
        if held:
            assert got.pid == pid
        else:
            assert json.loads(claim_path(out).read_text())["pid"] == os.getpid()
            assert isinstance(try_claim(out, {}), Holder)  # this process's own claim holds too
            got.release()
            assert not claim_path(out).exists()


# ---------------------------------------------------------------------------------------
# two writers of one result
class Gated:
    """A model whose first call waits for ``gate``: another writer runs meanwhile."""

    def __init__(self, model: SCOT, gate: threading.Event, entered: threading.Event) -> None:
        self._model, self._gate, self._entered, self.calls = model, gate, entered, 0

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self._entered.set()
            assert self._gate.wait(300)
        return self._model(*args, **kwargs)


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_second_writer_of_the_same_result_is_refused_while_the_first_writes(model, pair, tmp_path):
    """Two runs on the same images and folder, the first with keypoints: while the first
    matches, the second is told (one line, naming the holder) and writes nothing; the
    result left is the first run's, keypoints and all."""
    src, trg = pair
    gate, entered = threading.Event(), threading.Event()
    first = Job(src, trg, points=[[30.0, 40.0], [100.0, 120.0]])
    thread, box = _in_thread(lambda: match_jobs(Gated(model, gate, entered), [first], tmp_path))
    try:
        assert entered.wait(300)
        with pytest.raises(ScotError) as info:
            match_jobs(model, [Job(src, trg)], tmp_path)
        message = str(info.value)
        assert "a__b.json is being written for these images by another scot process" in message, message
        assert f"pid {os.getpid()}" in message and "\n" not in message
    finally:
        gate.set()
        thread.join()
    assert "error" not in box, box
    [written], _, _ = box["value"]
    record = json.loads(written.record.read_text())
    assert [k["source"] for k in record["keypoints"]] == [[30.0, 40.0], [100.0, 120.0]]
    assert _leftovers(tmp_path) == []


def test_two_pairs_runs_on_one_list_never_match_the_same_row(model, photo_rows, tmp_path):
    """Two --skip-existing runs of one list at once split its rows: a row the other run is
    matching is skipped (and said to be), a finished one kept."""
    jobs = [Job(r["src"], r["trg"]) for r in photo_rows[:3]]
    gate, entered = threading.Event(), threading.Event()
    gated = Gated(model, gate, entered)
    thread, box = _in_thread(lambda: match_jobs(gated, jobs, tmp_path, numbered=True, skip_existing=True))
    try:
        assert entered.wait(300)
        written_b, failed_b, skipped_b = match_jobs(model, jobs, tmp_path, numbered=True, skip_existing=True)
    finally:
        gate.set()
        thread.join()
    assert "error" not in box, box
    written_a, failed_a, skipped_a = box["value"]
    assert not failed_a and not failed_b
    rows_a = {o.record.name for o in written_a}
    rows_b = {o.record.name for o in written_b}
    assert rows_a.isdisjoint(rows_b) and len(rows_a | rows_b) == 3 == len(list(tmp_path.glob("*.json")))
    [(job, busy)] = skipped_b
    assert job is jobs[0] and busy.holder is not None and busy.holder.pid == os.getpid()
    assert all(skip.holder is None for _, skip in skipped_a) and len(skipped_a) == 2
    assert _leftovers(tmp_path) == []


def test_same_stem_other_images_take_another_name_while_the_first_is_claimed(pair, tmp_path):
    src, trg = pair
    jpg = Path(src).with_suffix(".jpg")
    from PIL import Image

    Image.open(src).convert("RGB").save(jpg)
    first = plan_outputs(tmp_path, src, trg)
    second = plan_outputs(tmp_path, str(jpg), trg)
    assert isinstance(first, Outputs) and isinstance(second, Outputs)
    assert (first.record.name, second.record.name) == ("a__b.json", "a__b-2.json")
    busy = plan_outputs(tmp_path, src, trg, skip_existing=True)
    assert isinstance(busy, Skipped) and busy.holder is not None
    first.release()
    second.release()
    assert _leftovers(tmp_path) == []


def test_a_killed_runs_claim_does_not_block_the_rerun(pair, tmp_path):
    """After SIGKILL the claim file stays; the rerun takes it over, finishes, and removes it."""
    src, trg = pair
    out = tmp_path / "o"
    out.mkdir()
    proc = _holder(out / "a__b.json", {"source": str(Path(src).resolve()), "target": str(Path(trg).resolve())}, 600)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "won"
        res = runner.invoke(app, ["match", src, trg, "-o", str(out), *LITE])
        one_line_error(res, "--output", "being written", f"pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _leftovers(out) == [".a__b.json.claim"]
    (out / ".a__b.json.part").write_text("{")  # what a writer killed while writing leaves
    (out / "..a__b.json.part.k2j4h5g6.tmp").write_text("{")
    res = runner.invoke(app, ["match", src, trg, "-o", str(out), *LITE])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a__b.json"]


def test_a_pairs_run_leaves_the_rows_another_run_is_matching_and_says_so(photo_rows, tmp_path):
    rows = photo_rows[:2]
    csv = tmp_path / "pairs.csv"
    csv.write_text("".join(f"{r['src']},{r['trg']}\n" for r in rows))
    out = tmp_path / "o"
    out.mkdir()
    first = out / f"0000_{Path(rows[0]['src']).stem}__{Path(rows[0]['trg']).stem}.json"
    proc = _holder(first, {"source": str(Path(rows[0]["src"]).resolve()),
                           "target": str(Path(rows[0]["trg"]).resolve())}, 600)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "won"
        args = ["match", "--pairs", str(csv), "-o", str(out), *LITE]
        res = runner.invoke(app, [*args, "--skip-existing"])
        assert res.exit_code == 0, res.output
        assert f"matched 1 of 2 pairs (1 being matched by another scot process (pid {proc.pid} on host" in res.stdout
        assert not first.exists() and len(list(out.glob("*.json"))) == 1
        res = runner.invoke(app, args)  # without --skip-existing: that row fails, saying why
        assert res.exit_code == 1 and "line 1: --output:" in res.stderr and "being written" in res.stderr
    finally:
        proc.kill()
        proc.wait()


def test_two_match_commands_at_once_never_both_report_one_result(pair, tmp_path):
    """The reported case, with two real processes: one with keypoints, one without, same
    images and folder.  One reports the result; the other fails with one line; the record
    is the reporting run's."""
    src, trg = pair
    kps = tmp_path / "kps.json"
    kps.write_text("[[30, 40], [100, 120]]")
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "scot", "match", src, trg, "-o", str(out), *LITE, "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd in (base + ["-k", str(kps)], base)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(k for k, (code, _, _) in enumerate(results) if code == 0)
    _, _, err = results[1 - winner]
    assert err.startswith("error: --output: ") and err.count("\n") == 1, err
    assert "being written" in err or "already holds the result" in err, err
    record = json.loads((out / "a__b.json").read_text())
    assert (record["keypoints"] is not None) == (winner == 0)
    assert _leftovers(out) == []


# ---------------------------------------------------------------------------------------
# a result is written whole or not at all
def test_a_failed_write_leaves_nothing_of_the_result(model, pair, tmp_path, monkeypatch):
    """The record fails last (here: a full disk, simulated): the picture, flow, warp and
    viewer already written are removed, the error names the record, and the rerun just works."""
    import errno

    import scot.outputs.write as write

    src, trg = pair
    real = write.atomic_write_json

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write, "atomic_write_json", full_disk)
    args = ["match", src, trg, "-o", str(tmp_path), "--backbone", "efficientnet-lite0", "--flow",
            str(tmp_path / "flow.npz"), "--warp", "--html"]
    res = runner.invoke(app, args)
    one_line_error(res, f"cannot write {tmp_path / 'a__b.json'}: no space left on the device",
                   "nothing of this result was kept", "free space, then run the same command again")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(write, "atomic_write_json", real)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a__b.html", "a__b.json", "a__b.png", "a__b.warp-check.png",
                                                          "a__b.warp.png", "flow.npz"]


def test_an_overwrite_that_fails_keeps_the_old_result_whole(model, pair, tmp_path, monkeypatch):
    import errno

    import scot.outputs.write as write

    src, trg = pair
    result = model(src, trg, keep_plan=False)
    old = write_match(model, result, src, trg, plan_outputs(tmp_path, src, trg))
    before = {p.name: p.read_bytes() for p in old.files()}

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write, "atomic_write_json", full_disk)
    planned = plan_outputs(tmp_path, src, trg, overwrite=True)
    with pytest.raises(ScotError, match="no space left"):
        write_match(model, result, src, trg, planned, top_k=5)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------------------------------
# full disks and read-only folders, for real (tmpfs)
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (``mount(size)``), unmounted at the end; root only."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs (a full disk and a read-only folder for real)")
    mounted: list[Path] = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def test_a_full_disk_stops_a_pairs_run_with_one_line_and_the_rerun_finishes_it(pair, tmp_path, tmpfs):
    """Room for one record, not two: the second row fails naming its record and saying how
    to go on, nothing of it is left, and after space is freed --skip-existing finishes."""
    src, trg = pair
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{src},{trg}\n{src},{trg}\n")
    probe = tmp_path / "probe"
    assert runner.invoke(app, ["match", src, trg, "-o", str(probe), *LITE]).exit_code == 0
    size = (probe / "a__b.json").stat().st_size
    disk = tmpfs(f"{(size * 3 // 2) // 4096 * 4096 + 4096}")
    args = ["match", "--pairs", str(pairs), "-o", str(disk), *LITE]
    res = runner.invoke(app, args)
    one_line_error(res, f"cannot write {disk / '0001_a__b.json'}: no space left on the device",
                   "1 pairs were written in this run and are kept",
                   "free space, then finish with the same command plus --skip-existing")
    assert sorted(p.name for p in disk.iterdir()) == ["0000_a__b.json"]
    _remount(disk, "size=4m")
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert "matched 1 of 2 pairs (1 already had results)" in res.stdout
    assert sorted(p.name for p in disk.iterdir()) == ["0000_a__b.json", "0001_a__b.json"]


def test_a_folder_turned_read_only_mid_run_is_one_line(pair, tmp_path, tmpfs, monkeypatch):
    import scot.outputs.jobs as jobs

    src, trg = pair
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{src},{trg}\n{src},{trg}\n")
    disk = tmpfs("4m")
    real, calls = jobs.write_match, []

    def read_only_before_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            _remount(disk, "ro")
        return real(*a, **k)

    monkeypatch.setattr(jobs, "write_match", read_only_before_the_second)
    args = ["match", "--pairs", str(pairs), "-o", str(disk), *LITE]
    res = runner.invoke(app, args)
    one_line_error(res, f"cannot write {disk / '0001_a__b.json'}: the file system is read-only",
                   "make the folder writable or choose another one, then finish with the same command plus "
                   "--skip-existing")
    monkeypatch.setattr(jobs, "write_match", real)
    # read-only from the start: refused before any work
    one_line_error(runner.invoke(app, args), "--output", f"cannot write to {disk}")
    _remount(disk, "rw")
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0 and "matched 1 of 2 pairs (1 already had results)" in res.stdout, res.output
    assert _leftovers(disk) == []


def test_eval_on_a_full_disk_says_how_to_resume(photo_willow, tmp_path, tmpfs):
    """The charts do not fit: one line naming the file, and --resume finishes the run."""
    disk = tmpfs("48k")
    run = disk / "run"
    args = ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
            "efficientnet-lite0", "--limit", "2", "--threads", "1", "-o", str(run)]
    res = runner.invoke(app, args)
    one_line_error(res, f"cannot write {run}/", "no space left on the device", "the pairs scored before are kept",
                   f"free space, then continue with the same command plus --resume -o {run}")
    _remount(disk, "size=8m")
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_a_journal_write_on_a_full_disk_keeps_whole_lines(tmp_path, tmpfs):
    from scot.evaluation.journal import Journal
    from scot.writing import WriteError

    disk = tmpfs("64k")
    journal = Journal(disk / "pairs.jsonl")
    journal.write([{"index": 0, "pad": "x" * 100}])
    whole = (disk / "pairs.jsonl").read_bytes()
    with pytest.raises(WriteError, match="pairs.jsonl: no space left on the device"):
        journal.write([{"index": 1, "pad": "x" * 200_000}])
    journal.close()
    assert (disk / "pairs.jsonl").read_bytes() == whole


# ---------------------------------------------------------------------------------------
# --skip-existing keeps only results of the same settings
@pytest.fixture
def half_run(photo_rows, tmp_path, monkeypatch):
    """A --pairs run of three rows stopped after the first, and its arguments."""
    import scot.outputs.jobs as jobs

    csv = tmp_path / "pairs.csv"
    csv.write_text("".join(f"{r['src']},{r['trg']}\n" for r in photo_rows[:3]))
    args = ["match", "--pairs", str(csv), "-o", str(tmp_path / "o"), *LITE]
    real, calls = jobs.write_match, []

    def stop_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(jobs, "write_match", stop_on_the_second)
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.setattr(jobs, "write_match", real)
    return args, tmp_path / "o"


@pytest.mark.parametrize("option, fragments", [
    (["--eps", "0.1"], ["--eps:", "was made with 0.05, this run uses 0.1"]),
    (["--backbone", "efficientnet-lite2"], ["--backbone:", "was made with efficientnet-lite0, this run uses "
                                                          "efficientnet-lite2", "--hyperpixel differs too"]),
    (["--html"], ["--html:", "was made with off, this run uses on"]),
])
def test_skip_existing_refuses_results_of_other_settings(half_run, option, fragments):
    args, out = half_run
    before = sorted(out.iterdir())
    res = runner.invoke(app, [*args, *option, "--skip-existing"])
    one_line_error(res, *fragments, "0000_", "another output folder", "--overwrite instead of --skip-existing")
    assert sorted(out.iterdir()) == before  # nothing matched, nothing written
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0 and "matched 2 of 3 pairs (1 already had results)" in res.stdout, res.output


def test_skip_existing_refuses_a_row_whose_keypoints_changed(photo_rows, tmp_path):
    row = photo_rows[0]
    kps = tmp_path / "k.json"
    kps.write_text("[[30, 40]]")
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"{row['src']},{row['trg']},{kps}\n")
    args = ["match", "--pairs", str(csv), "-o", str(tmp_path / "o"), *LITE]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--skip-existing"]).exit_code == 0
    kps.write_text("[[31, 40]]")
    one_line_error(runner.invoke(app, [*args, "--skip-existing"]), "--pairs: line 1:", "keypoints", "k.json")


def test_rows_keep_their_names_when_a_bad_row_is_mended(photo_rows, tmp_path):
    """Outputs are numbered by the row's place in the list, so mending a bad row and
    finishing with --skip-existing adds its result and matches nothing twice."""
    missing = tmp_path / "later.png"
    row = photo_rows[0]
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"{missing},{row['trg']}\n{row['src']},{row['trg']}\n")
    args = ["match", "--pairs", str(csv), "-o", str(tmp_path / "o"), *LITE]
    assert runner.invoke(app, args).exit_code == 1
    shutil.copy(row["src"], missing)
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0 and "matched 1 of 2 pairs (1 already had results)" in res.stdout, res.output
    assert len(list((tmp_path / "o").glob("*.json"))) == 2
