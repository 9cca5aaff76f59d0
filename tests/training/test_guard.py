"""The non-finite guard reads one number from the device per optimizer step, and still names what diverged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from smoa.training.hub import NonFiniteError, trainer_classes

ARGS = SimpleNamespace(output_dir="runs/x", learning_rate=1e-3)
STATE = SimpleNamespace(global_step=4)


def model_with_grads(bad: str | None = None) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model(torch.ones(2, 3)).sum().backward()
    model[1].bias.grad = None  # a parameter without a gradient is skipped
    if bad == "nan":
        model[1].weight.grad[0, 1] = float("nan")
    if bad == "inf":
        model[0].bias.grad[2] = float("-inf")
    return model


def host_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for method in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _name=method, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


def test_a_finite_step_reads_one_number(monkeypatch):
    guard = trainer_classes()[2]()
    model = model_with_grads()
    losses = [torch.tensor(0.5), torch.tensor(0.7), torch.tensor(0.2)]  # three micro-batches
    reads = host_reads(monkeypatch)
    for loss in losses:
        guard.observe_loss(loss)
    guard.on_pre_optimizer_step(ARGS, STATE, None, model=model)
    assert reads == ["__bool__"] and guard.loss is None


def test_huge_finite_gradients_are_not_mistaken_for_overflow():
    guard = trainer_classes()[2]()
    model = model_with_grads()
    model[0].weight.grad.fill_(3e38)  # its square overflows; the largest entry does not
    guard.observe_loss(torch.tensor(1.0))
    guard.on_pre_optimizer_step(ARGS, STATE, None, model=model)


@pytest.mark.parametrize(
    ("bad", "loss", "named"),
    [
        ("nan", 0.5, r"the gradient of 1\.weight"),
        ("inf", 0.5, r"the gradient of 0\.bias"),
        (None, float("nan"), r"the training loss \(nan\)"),
        ("nan", float("inf"), r"the training loss \(inf\)"),  # the loss is named first: it caused the gradients
    ],
)
def test_a_non_finite_step_names_its_cause(bad, loss, named):
    guard = trainer_classes()[2]()
    guard.observe_loss(torch.tensor(0.3))
    guard.observe_loss(torch.tensor(loss))
    with pytest.raises(NonFiniteError, match=rf"training diverged at step 5: {named} is not finite"):
        guard.on_pre_optimizer_step(ARGS, STATE, None, model=model_with_grads(bad))
