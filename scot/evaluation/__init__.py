"""Evaluation on the benchmarks: the runner (one loop for any number of processes), its
settings, run folder and crash-safe journal, scoring and reports."""

from .folder import find_resumable, resolve_run_folder
from .journal import JOURNAL, RunState, load_journal
from .report import format_table
from .runner import evaluate
from .scoring import mirror_keypoints, score_pair
from .settings import EvalSettings

__all__ = ["EvalSettings", "evaluate", "find_resumable", "resolve_run_folder", "format_table", "score_pair",
           "mirror_keypoints", "load_journal", "RunState", "JOURNAL"]
