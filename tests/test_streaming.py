"""The low-memory streamed path equals the in-memory pipeline."""

from __future__ import annotations

import pytest
import torch

from scot import SCOT, SCOTConfig, ScotError


@pytest.fixture(scope="module")
def lite0_pair(photo_rows):
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow"))
    row = photo_rows[0]  # photo -> zoomed
    return model, model.extract(row["src"]), model.extract(row["trg"]), row["src_kps"]


@pytest.mark.parametrize("overrides", [{}, {"sinkhorn_iters": 3}, {"unbalanced_tau": 0.5}, {"rhm": False},
                                       {"exp2": 1.0}, {"eps": 0.01}])
def test_streamed_equals_in_memory(lite0_pair, overrides):
    base, s, t, kps = lite0_pair
    cfg = base.config.replace(symmetric=False, **overrides)  # streaming matches one way
    in_memory = SCOT(cfg, backbone=base.backbone).match(s, t, kps, keep_plan=False)
    streamed = SCOT(cfg.replace(low_memory=True, low_memory_rows=333), backbone=base.backbone).match(s, t, kps)
    assert float((in_memory.best == streamed.best).float().mean()) >= 0.999
    torch.testing.assert_close(streamed.best_confidence, in_memory.best_confidence, rtol=1e-4, atol=0)
    torch.testing.assert_close(streamed.transferred, in_memory.transferred, atol=0.5, rtol=0)
    assert streamed.votes is None and streamed.confidence is None


def test_streaming_rejects_incompatible_options():
    with pytest.raises(ScotError, match="low_memory"):
        SCOTConfig(low_memory=True, sinkhorn_mode="log")
    with pytest.raises(ScotError, match="low_memory"):
        SCOTConfig(low_memory=True, ot=False)
