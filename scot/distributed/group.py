"""The ranks of a ``torchrun`` job, seen from one of them (:class:`Group`).

:func:`~.world.start` makes one when torchrun started more than one rank.  In a group:

* ``torch.distributed`` is initialised with ``gloo`` on the CPU; on a CUDA device each
  rank uses ``cuda:LOCAL_RANK`` and the group uses ``nccl`` for CUDA tensors (and
  ``gloo`` for CPU ones);
* every rank publishes a heartbeat in the launcher's key-value store twice a second,
  with its state and progress.  Every wait for the other ranks polls those heartbeats: a
  rank that reported an error, or whose heartbeat stopped for ``timeout`` seconds, ends
  the wait with a one-line :class:`PeerError` that names it.  A slow rank that is alive
  is waited for, so no wait is bounded by a guess of how long the work takes, and none
  can hang forever;
* when the launcher stops the ranks (it sends SIGTERM to all once one of them dies), the
  main thread gets :class:`Stopped`, and :meth:`Group.stopped` finds out which rank died.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch

from ..errors import ScotError
from .launch import Launch, backend_for, rank_device

T = TypeVar("T")

BEAT_SECONDS = 0.5
"""How often each rank publishes its heartbeat."""

POLL_SECONDS = 0.1
"""The longest pause between two looks at the other ranks while waiting for them."""

DEFAULT_TIMEOUT = 120.0
"""Seconds a rank may show no sign of life before the others stop with an error naming it."""


# --------------------------------------------------------------------------------------
# Errors


class Stopped(KeyboardInterrupt):
    """Raised in a rank's main thread when the launcher sends it SIGTERM.

    torchrun stops every rank this way once one of them has failed; code that cleans up
    after an interruption (journals, snapshots) runs as for Ctrl-C.
    """


class PeerError(ScotError):
    """The run cannot go on because of a rank; raised on every rank that learns it.

    Args:
        message: one line naming the rank and what happened.
        option: the parameter the underlying error is about, if any.
        report: True on the one rank that should print the error (the failing rank for
            its own error, else the lowest surviving rank), so the run ends with one line.
        agreed: the error is one that a collective step found (e.g. a bad option or a
            missing dataset), not the loss of a rank during the work.
    """

    def __init__(self, message: str, *, option: str | None = None, report: bool = True, agreed: bool = False) -> None:
        super().__init__(message, option=option)
        self.report = report
        self.agreed = agreed


# --------------------------------------------------------------------------------------
# The group


class Group:
    """The ranks of one torchrun job, seen from one of them; see the module's docstring.

    Create it with :func:`start` (or :meth:`Group.start`) and end it with :meth:`close`.
    Every rank must make the same sequence of collective calls (:meth:`step`,
    :meth:`decide`, :meth:`gather`, :meth:`all_reduce_sum`).
    """

    def __init__(self, launch: Launch, store: Any, timeout: float) -> None:
        self.launch = launch
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.timeout = float(timeout)
        self.device = "cpu"
        self._store = store
        self._calls = 0
        self._beat_keys = [f"beat/{r}" for r in range(self.world_size)]
        self._seen: list[tuple[int, float]] = [(-1, time.monotonic())] * self.world_size
        self._infos: list[dict[str, Any]] = [{} for _ in range(self.world_size)]
        self._mine: dict[str, Any] = {"n": 0, "state": "running", "host": socket.gethostname(),
                                      "local_rank": launch.local_rank, "progress": [0, 0.0]}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._published = threading.Condition(self._lock)
        self._version = 0
        self._published_version = -1
        self._beat_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._old_sigterm: Any = None
        self._initialised = False

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def start(cls, launch: Launch, device: str, timeout: float = DEFAULT_TIMEOUT) -> Group:
        """Join the other ranks: rendezvous through the launcher's store, start the
        heartbeat, agree on the device and initialise ``torch.distributed``.

        Args:
            launch: this process's place (``world_size`` > 1).
            device: the configured device (see :func:`rank_device`).
            timeout: seconds without a sign of life before a rank is declared gone; also
                the timeout of ``torch.distributed``'s rendezvous and collectives.

        Raises:
            ScotError: ``timeout`` is not > 0; PeerError: the device is wrong on some rank.
        """
        import torch.distributed as dist

        if not timeout > 0:
            raise ScotError(f"must be > 0 seconds, got {timeout}", option="rank_timeout")
        span = timedelta(seconds=timeout)
        store, rank, world = next(dist.rendezvous("env://", timeout=span))
        if (rank, world) != (launch.rank, launch.world_size):  # pragma: no cover - the launcher's contract
            raise ScotError(f"torchrun gave rank {rank} of {world}, the environment {launch.rank} of "
                            f"{launch.world_size}")
        # the launcher's store outlives a restart: every key of this attempt goes under its own prefix
        attempt = f"scot/{launch.run_id}/{launch.restart_count}/"
        group = cls(launch, dist.PrefixStore(attempt, store), timeout)
        try:
            group._begin(store, attempt)
            group.device = group.decide_each("device", lambda: rank_device(device, launch))
            dist.init_process_group(backend_for(group.device), store=dist.PrefixStore(attempt + "pg/", store),
                                    rank=rank, world_size=world, timeout=span)
            group._initialised = True
            if torch.device(group.device).type == "cuda" and torch.cuda.is_available():
                torch.cuda.set_device(torch.device(group.device))
        except BaseException:
            group.close()
            raise
        return group

    def _begin(self, raw_store: Any, prefix: str) -> None:
        """Start the heartbeat thread and the SIGTERM handler, and wait for every rank's first beat."""
        import torch.distributed as dist

        beat_store = self._store
        if hasattr(raw_store, "clone"):  # the heartbeat gets its own connection
            beat_store = dist.PrefixStore(prefix, raw_store.clone())
        self._thread = threading.Thread(target=self._beat, args=(beat_store,), name="scot-heartbeat", daemon=True)
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_stopped)
        self._flush()
        try:
            self._store.wait(self._beat_keys, timedelta(seconds=self.timeout))
        except Exception as exc:
            raise PeerError(f"not every rank joined within {self.timeout:g} s ({_first_line(exc)})") from None
        self._read_beats()

    def close(self) -> None:
        """Leave the group: the last heartbeat says ``done`` unless the rank failed."""
        with self._lock:
            if self._mine["state"] == "running":
                self._mine["state"] = "done"
        try:
            self._flush()
        finally:
            self._stop.set()
            self._wake.set()
            if self._thread is not None:
                self._thread.join(timeout=2 * BEAT_SECONDS + 1)
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            if self._initialised:
                import torch.distributed as dist

                self._initialised = False
                dist.destroy_process_group()

    # ---------------------------------------------------------------- heartbeat
    def _beat(self, store: Any) -> None:
        """The heartbeat thread: publish this rank's state every BEAT_SECONDS, and at once when asked."""
        while True:
            self._wake.clear()  # a request made from here on gets a beat of its own
            with self._lock:
                self._mine["n"] += 1
                payload = json.dumps(self._mine)
                version = self._version
            try:
                store.set(self._beat_keys[self.rank], payload)
            except Exception as exc:  # the store is gone: the main thread reports it
                with self._lock:
                    self._beat_error = exc
                    self._published.notify_all()
                return
            with self._lock:
                self._published_version = version
                self._published.notify_all()
            if self._stop.is_set():
                return
            self._wake.wait(BEAT_SECONDS)

    def _update(self, **fields: Any) -> None:
        with self._lock:
            self._mine.update(fields)
            self._version += 1
        self._wake.set()

    def _flush(self) -> None:
        """Wait (briefly) until the heartbeat thread has published the latest state."""
        with self._lock:
            self._version += 1
            wanted = self._version
        self._wake.set()
        deadline = time.monotonic() + 2 * BEAT_SECONDS + 2
        with self._lock:
            while (self._published_version < wanted and self._beat_error is None and self._thread is not None
                   and self._thread.is_alive() and time.monotonic() < deadline):
                self._published.wait(BEAT_SECONDS)

    def set_progress(self, done: int, value: float = 0.0) -> None:
        """Publish this rank's progress: a count and a running sum (summed over ranks by :meth:`progress`)."""
        self._update(progress=[int(done), float(value)])

    def progress(self) -> tuple[int, float]:
        """The sums over ranks of the progress they last published (a fresh look at them)."""
        self._read_beats()
        done, value = 0, 0.0
        for r, info in enumerate(self._infos):
            count, total = self._mine["progress"] if r == self.rank else info.get("progress", [0, 0.0])
            done, value = done + int(count), value + float(total)
        return done, value

    def fail(self, error: BaseException) -> None:
        """Tell the other ranks that this one failed with ``error`` (they stop with a quiet :class:`PeerError`)."""
        message = (error.message if isinstance(error, ScotError)
                   else f"unexpected {type(error).__name__}: {_first_line(error)}")
        self._update(state="failed", error=message, option=getattr(error, "option", None))
        self._flush()

    # ---------------------------------------------------------------- watching the others
    def _read_beats(self) -> list[dict[str, Any]]:
        with self._lock:
            lost = self._beat_error
        if lost is not None:
            raise PeerError(f"lost torchrun's store ({_first_line(lost)}): the launcher or rank 0's node is gone",
                            report=self.rank == 0)
        try:
            raw = self._store.multi_get(self._beat_keys)
        except Exception as exc:
            raise PeerError(f"lost torchrun's store ({_first_line(exc)}): the launcher or rank 0's node is gone",
                            report=self.rank == 0) from None
        now = time.monotonic()
        for r, payload in enumerate(raw):
            info = json.loads(payload)
            if info["n"] != self._seen[r][0]:
                self._seen[r] = (info["n"], now)
            self._infos[r] = info
        return self._infos

    def _name(self, r: int) -> str:
        """``rank R of W (local rank L on HOST)``."""
        info = self._infos[r]
        where = f" (local rank {info['local_rank']} on {info['host']})" if "host" in info else ""
        return f"rank {r} of {self.world_size}{where}"

    def _gone(self, now: float) -> list[int]:
        """Ranks whose heartbeat has not moved for ``timeout`` seconds while they were still running."""
        return [r for r in range(self.world_size) if r != self.rank and self._infos[r].get("state") == "running"
                and now - self._seen[r][1] > self.timeout]

    def _reporter(self, dead: Sequence[int]) -> bool:
        """Whether this rank is the lowest that is still alive (it prints what the others do not)."""
        return self.rank == min(r for r in range(self.world_size) if r not in dead)

    def check(self) -> None:
        """Look at the other ranks; raise :class:`PeerError` if one failed or is gone.

        A failed rank printed its own error, so the PeerError is quiet there
        (``report`` False); a rank gone silent for ``timeout`` seconds is reported by the
        lowest surviving rank.
        """
        self._read_beats()
        for r, info in enumerate(self._infos):
            if r != self.rank and info.get("state") == "failed":
                raise PeerError(f"{info.get('error')} ({self._name(r)} failed)",
                                option=info.get("option"), report=False)
        dead = self._gone(time.monotonic())
        if dead:
            raise PeerError(f"{self._name(dead[0])} shows no sign of life for {self.timeout:g} s "
                            f"(--rank-timeout); stopping", report=self._reporter(dead))

    def stopped(self) -> PeerError:
        """Why the launcher stopped this rank, as one error naming the rank that died.

        Called after :class:`Stopped`: marks this rank as stopping, watches the others'
        heartbeats for a moment, and names a rank that failed, or one that neither beats
        nor says it is stopping (it died).
        """
        self._update(state="stopping")
        self._flush()
        try:
            before = [info.get("n") for info in self._read_beats()]
            time.sleep(3 * BEAT_SECONDS)
            infos = self._read_beats()
        except PeerError:
            return PeerError("stopped by the launcher (its store is gone too)", report=self.rank == 0)
        for r, info in enumerate(infos):
            if r != self.rank and info.get("state") == "failed":
                return PeerError(f"{info.get('error')} ({self._name(r)} failed)",
                                 option=info.get("option"), report=False)
        dead = [r for r, info in enumerate(infos) if r != self.rank and info.get("n") == before[r]
                and info.get("state") not in ("stopping", "done")]
        if dead:
            then = ("; torchrun restarts the ranks and they go on with their shards" if self.launch.restarts_left
                    else "; torchrun stopped the other ranks")
            return PeerError(f"{self._name(dead[0])} died{then}", report=self._reporter(dead))
        return PeerError("stopped by a signal from the launcher", report=self.rank == 0)

    # ---------------------------------------------------------------- collective calls
    def _arrive(self, name: str, payload: dict[str, Any],
                on_wait: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Post ``payload`` under step ``name`` and return every rank's, once all have posted.

        While waiting, the other ranks are watched (:meth:`check`): the wait ends with a
        PeerError if one fails, goes silent, or leaves without reaching this step.
        """
        self._calls += 1
        prefix = f"step/{self._calls}/{name}/"
        keys = [prefix + str(r) for r in range(self.world_size)]
        self._store.set(keys[self.rank], json.dumps(payload))
        pause = 0.002
        while not self._store.check(keys):
            self.check()
            left = [r for r, info in enumerate(self._infos) if r != self.rank and info.get("state") == "done"
                    and not self._store.check([keys[r]])]
            if left:
                raise PeerError(f"{self._name(left[0])} left the run before '{name}'", report=self._reporter(left))
            if on_wait is not None:
                on_wait()
            time.sleep(pause)
            pause = min(POLL_SECONDS, pause * 1.5)
        return [json.loads(v) for v in self._store.multi_get(keys)]

    def _agreed(self, outcomes: Sequence[dict[str, Any]]) -> PeerError | None:
        """The error of the lowest rank that failed a step (the same on every rank), or None."""
        failed = [r for r, o in enumerate(outcomes) if "error" in o]
        if not failed:
            return None
        first = outcomes[failed[0]]
        same_everywhere = len(failed) == self.world_size and all(outcomes[r]["error"] == first["error"] for r in failed)
        where = "" if same_everywhere else f" (rank {failed[0]} of {self.world_size})"
        return PeerError(f"{first['error']}{where}", option=first.get("option"), report=self.rank == failed[0],
                         agreed=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run the body on every rank, then wait for all; an error on any rank is raised on all.

        A :class:`ScotError` in the body becomes one :class:`PeerError` on every rank
        (printed by the lowest failing rank).  Another exception is re-raised where it
        happened, and the other ranks stop with a quiet PeerError.
        """
        try:
            yield
        except ScotError as exc:
            error = self._agreed(self._arrive(name, {"error": exc.message, "option": exc.option}))
            raise (error or exc) from None
        except Exception as exc:
            self._arrive(name, {"error": f"unexpected {type(exc).__name__}: {_first_line(exc)}", "own": True})
            raise
        outcomes = self._arrive(name, {})
        error = self._agreed(outcomes)
        if error is not None:
            own = [o for o in outcomes if o.get("own")]
            raise PeerError(error.message, option=error.option, report=error.report and not own, agreed=True)

    def decide_each(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank (its own value each), with errors agreed as in :meth:`step`."""
        with self.step(name):
            value = fn()
        return value

    def decide(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 only; its (JSON) value on every rank, its error raised on every rank."""
        value = None
        with self.step(name):
            if self.rank == 0:
                value = fn()
        return self.gather(name + " (value)", value)[0]

    def gather(self, name: str, value: Any, on_wait: Callable[[], None] | None = None) -> list[Any]:
        """Every rank's (JSON) ``value``, in rank order, on every rank; ``on_wait()`` runs while waiting."""
        return [o["value"] for o in self._arrive(name, {"value": value}, on_wait)]

    def all_reduce_sum(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (``torch.distributed.all_reduce``), after all have arrived.

        The arrival is watched like every wait here, so the collective itself starts only
        when every rank is there and alive; it is bounded by the group's timeout.
        """
        import torch.distributed as dist

        self._arrive(name, {})
        try:
            work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
            work.wait(timedelta(seconds=self.timeout))
        except Exception as exc:
            self.check()
            raise PeerError(f"summing '{name}' over the ranks failed: {_first_line(exc)}") from None
        return tensor


def _raise_stopped(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise :class:`Stopped` once; a second SIGTERM ends the process as usual."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Stopped()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
