"""Evaluation on the benchmarks: the runner, its journal, scoring and reports."""

from .journal import JOURNAL, RunState, load_journal
from .report import format_table
from .runner import EvalSettings, evaluate, find_resumable, resolve_run_folder
from .scoring import score_pair

__all__ = ["EvalSettings", "evaluate", "find_resumable", "resolve_run_folder", "format_table", "score_pair", "load_journal", "RunState", "JOURNAL"]
