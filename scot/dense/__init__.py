"""Dense outputs of a match: the flow of every source pixel, warps, and moved label masks.

* :mod:`scot.dense.flow`: :func:`dense_flow`, the keypoint transfer rule of
  :mod:`scot.transfer` at every source pixel (one shared aggregation,
  :func:`scot.transfer.aggregate_shifts`, so the flow at a keypoint is its transfer);
* :mod:`scot.dense.warp`: :func:`warp_image`, :func:`blend`, :func:`checkerboard`;
* :mod:`scot.dense.mask`: :func:`transfer_mask` and its splatting and hole filling.
"""

from __future__ import annotations

from .flow import (
    RULES,
    GridAxes,
    Rule,
    box_shifts,
    containing_range,
    dense_flow,
    flow_inside,
    grid_axes,
    identity_flow,
    nearest_index,
    pixel_coordinates,
    transfer_lattice,
)
from .mask import bridged, fill_holes, fill_radius, flow_step, splat_labels, transfer_mask
from .warp import blend, checkerboard, warp_image

__all__ = [
    "RULES", "GridAxes", "Rule", "box_shifts", "containing_range", "dense_flow", "flow_inside", "grid_axes",
    "identity_flow", "nearest_index", "pixel_coordinates", "transfer_lattice", "bridged", "fill_holes",
    "fill_radius", "flow_step", "splat_labels", "transfer_mask", "blend", "checkerboard", "warp_image",
]
