"""One memorisation run: an arm at a learning rate and a seed, trained on the cached top layers, as one JSON.

The run is fully determined by its :class:`RunSpec`: the seed fixes the pairs (the same for every arm at that
seed, so arms are compared paired), the adapter's initialisation and the batch order.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from smoa.evidence.memorize import (
    MemorizeData,
    encode_pairs,
    lower_layer_states,
    make_pairs,
    top_layer_states,
    value_logits,
    value_targets,
)

FULL = "full"  # full fine-tuning of the target modules: the ceiling arm


@dataclass(frozen=True)
class RunSpec:
    """Everything a run depends on.

    ``method``: a registry method name, or ``"full"``. ``target_params``: the matched budget (None for full).
    ``vocab``: ``"hex"`` scores the value over the 16 hex-digit tokens, ``"full"`` over the whole vocabulary.
    """

    method: str
    learning_rate: float
    seed: int
    target_params: int | None
    method_args: Mapping[str, Any] = field(default_factory=dict)
    n_pairs: int = 512
    key_length: int = 8
    value_length: int = 8
    top_layers: int = 2
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
    steps: int = 300
    batch_size: int = 64
    warmup_steps: int = 10
    eval_every: int = 25
    max_grad_norm: float = 1.0
    vocab: str = "hex"
    model: str = "default"


def target_regex(num_layers: int, top_layers: int, targets: tuple[str, ...]) -> str:
    """A PEFT ``target_modules`` regex that matches ``targets`` in the top ``top_layers`` decoder layers only."""
    layers = "|".join(str(i) for i in range(num_layers - top_layers, num_layers))
    names = "|".join(re.escape(t) for t in targets)
    return rf"(.*\.)?layers\.({layers})\.(self_attn|mlp)\.({names})"


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs: read once, at the first call (a long runner started at one commit
    keeps running that code when the checkout moves on), with ``+dirty`` when tracked files under ``src`` differed."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "src") else "")


def build_arm(model: nn.Module, spec: RunSpec) -> tuple[nn.Module, int]:
    """``(model, trainable)``: ``model`` with the arm's adapter on the top layers (or those modules unfrozen)."""
    num_layers = model.config.num_hidden_layers
    pattern = target_regex(num_layers, spec.top_layers, spec.targets)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if spec.method == FULL:
        for name, module in model.named_modules():
            if re.fullmatch(pattern, name):
                module.weight.requires_grad_(True)
    else:
        from peft import get_peft_model

        import smoa  # noqa: F401  (registers SMoA and the baselines with PEFT)
        from smoa.methods import plan_method

        plan = plan_method(spec.method, model, "matched", spec.target_params, pattern, **dict(spec.method_args))
        model = get_peft_model(model, plan.peft_config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, trainable


def evaluate(model: nn.Module, data: MemorizeData, hidden: torch.Tensor, first: int, vocab, chunk: int = 128):
    """Value-token loss, character accuracy, exact match and per-pair correct characters, on all pairs."""
    losses, correct = [], []
    with torch.no_grad():
        for start in range(0, len(hidden), chunk):
            rows = torch.arange(start, min(start + chunk, len(hidden)), device=hidden.device)
            logits = value_logits(model, top_layer_states(model, hidden[rows], first, data.value_positions), vocab)
            target = value_targets(data, rows, vocab)
            losses.append(nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
            correct.append((logits.argmax(-1) == target).sum(-1))
    per_pair = torch.cat(correct)
    value_length = data.targets.shape[1]
    return {
        "value_loss": float(sum(losses)) / per_pair.numel() / value_length,
        "char_accuracy": float(per_pair.sum()) / per_pair.numel() / value_length,
        "exact_match": float((per_pair == value_length).float().mean()),
    }, per_pair.tolist()


_STATES: dict[tuple[str, int], torch.Tensor] = {}


def shared_lower_states(model: nn.Module, data: MemorizeData, first: int) -> torch.Tensor:
    """:func:`lower_layer_states`, computed once per (data, layer) in a process and shared by every arm (a few
    MB per seed, so every seed's states are kept)."""
    key = (data.digest, first)
    if key not in _STATES:
        _STATES[key] = lower_layer_states(model, data, first)
    return _STATES[key]


def run_memorize(
    spec: RunSpec, log: Callable[[str], None] = print, on_trained: Callable[[nn.Module], None] | None = None
) -> dict[str, Any]:
    """Train one arm and return its result (the JSON a study writes): curve, final metrics, per-pair counts.
    ``on_trained`` receives the trained model (e.g. to read a full fine-tuning update)."""
    from smoa.models import load_model_and_tokenizer

    started = time.perf_counter()
    git_commit()  # the code's commit, before anything can move the checkout
    torch.manual_seed(spec.seed)
    model, tokenizer = load_model_and_tokenizer(spec.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # an execution detail, recorded
    model.to(device)
    data = encode_pairs(make_pairs(spec.n_pairs, spec.key_length, spec.value_length, spec.seed), tokenizer)
    data = data.to(device)
    first = model.config.num_hidden_layers - spec.top_layers
    hidden = shared_lower_states(model, data, first)
    vocab = None if spec.vocab == "full" else data.hex_token_ids
    torch.manual_seed(spec.seed)
    model, trainable = build_arm(model, spec)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(spec.warmup_steps, spec.steps))
    order = torch.Generator().manual_seed(spec.seed)
    batches = _batches(spec.n_pairs, spec.batch_size, order)

    def checkpoint(step: int) -> dict[str, Any]:
        model.eval()
        metrics, per_pair = evaluate(model, data, hidden, first, vocab)
        model.train()
        return {"step": step, **metrics}, per_pair

    point, _ = checkpoint(0)
    curve, train_loss, diverged = [point], [], None
    for step in range(1, spec.steps + 1):
        rows = next(batches).to(hidden.device)
        logits = value_logits(model, top_layer_states(model, hidden[rows], first, data.value_positions), vocab)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), value_targets(data, rows, vocab).flatten())
        if not torch.isfinite(loss):
            diverged = f"non-finite training loss at step {step}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, spec.max_grad_norm)
        optimizer.step()
        schedule.step()
        train_loss.append(loss.item())
        if step % spec.eval_every == 0 or step == spec.steps:
            point, per_pair = checkpoint(step)
            curve.append(point)
            log(f"  step {step}: loss {point['value_loss']:.4f}, char acc {point['char_accuracy']:.3f}")
    final = curve[-1] if diverged is None else None
    if on_trained is not None:
        on_trained(model)
    return {
        "spec": {**asdict(spec), "method_args": dict(spec.method_args), "targets": list(spec.targets)},
        "git_commit": git_commit(),
        "data_sha256": data.digest,
        "trainable_params": trainable,
        "diverged": diverged,
        "curve": curve,
        "train_loss": train_loss,
        "final": final,
        "steps_to_half": next((p["step"] for p in curve if p["char_accuracy"] >= 0.5), None),
        "final_correct_chars": per_pair if diverged is None else None,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Rows of successive seeded epochs, ``batch_size`` at a time (an epoch's tail joins the next epoch)."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def finite(value: float) -> bool:
    return value is not None and math.isfinite(value)
