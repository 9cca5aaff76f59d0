"""The merge snapshot: the first merge keeps W0, later merges re-use it, the unmerge takes it back once."""

from __future__ import annotations

import pytest
import torch

from smoa.adapter.merge_snapshot import MergeSnapshot


def test_first_kept_weight_wins_until_released():
    snapshot: MergeSnapshot[torch.Tensor] = MergeSnapshot()
    assert not snapshot.taken and snapshot.original is None
    w0 = torch.randn(3, 4)
    snapshot.keep_first(lambda: w0)
    snapshot.keep_first(lambda: pytest.fail("a second merge must not take another snapshot"))
    assert snapshot.taken and snapshot.original is w0
    assert snapshot.release() is w0
    assert not snapshot.taken and snapshot.original is None
    with pytest.raises(RuntimeError, match="nothing was merged"):
        snapshot.release()


def test_snapshot_is_not_module_state():
    layer = torch.nn.Linear(4, 3)
    layer.snapshot = MergeSnapshot()
    layer.snapshot.keep_first(lambda: torch.nn.Parameter(layer.weight.detach().clone()))
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
