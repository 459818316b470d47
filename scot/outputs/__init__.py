"""What ``scot match`` writes for a matched pair, and where.

* :mod:`~scot.outputs.names`: the files of one result and their unique names
  (:func:`plan_outputs`, :class:`Outputs`, :class:`Skipped`, :class:`Extras`);
* :mod:`~scot.outputs.claims`: a process's claim on a result, so that one process writes it
  (:func:`try_claim`);
* :mod:`~scot.outputs.labels`: the source label mask of ``--mask`` (:func:`read_mask`);
* :mod:`~scot.outputs.write`: the picture, the dense outputs, the viewer and the record,
  written as a unit (:func:`write_match`; the record itself is :func:`scot.record.match_record`);
* :mod:`~scot.outputs.jobs`: many pairs, each input checked before any work, earlier
  results kept only when made alike (:func:`prepare_jobs`, :func:`match_jobs`).
"""

from __future__ import annotations

from .claims import Claim, Holder, try_claim
from .jobs import Failure, Job, MixedResults, match_jobs, prepare_jobs
from .labels import LabelMask, read_mask
from .names import RECORD, Extras, Outputs, Skipped, plan_outputs
from .write import VIEWER_SIDE, VIEWER_TOPK, WARP_SIDE, Unit, write_match

__all__ = ["RECORD", "VIEWER_SIDE", "VIEWER_TOPK", "WARP_SIDE", "Claim", "Extras", "Failure", "Holder", "Job",
           "LabelMask", "MixedResults", "Outputs", "Skipped", "Unit", "match_jobs", "plan_outputs", "prepare_jobs",
           "read_mask", "try_claim", "write_match"]
