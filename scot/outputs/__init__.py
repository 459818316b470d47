"""What ``scot match`` writes for a matched pair, and where.

* :mod:`~scot.outputs.names`: the files of one result and their unique names
  (:func:`plan_outputs`, :class:`Outputs`, :class:`Extras`);
* :mod:`~scot.outputs.labels`: the source label mask of ``--mask`` (:func:`read_mask`);
* :mod:`~scot.outputs.write`: the picture, the dense outputs, the viewer and the record
  (:func:`write_match`; the record itself is :func:`scot.record.match_record`);
* :mod:`~scot.outputs.jobs`: many pairs, each input checked before any work
  (:func:`prepare_jobs`, :func:`match_jobs`).
"""

from __future__ import annotations

from .jobs import Failure, Job, match_jobs, prepare_jobs
from .labels import LabelMask, read_mask
from .names import RECORD, Extras, Outputs, plan_outputs
from .write import VIEWER_SIDE, VIEWER_TOPK, WARP_SIDE, write_match

__all__ = ["RECORD", "VIEWER_SIDE", "VIEWER_TOPK", "WARP_SIDE", "Extras", "Failure", "Job", "LabelMask", "Outputs",
           "match_jobs", "plan_outputs", "prepare_jobs", "read_mask", "write_match"]
