"""Reference losses of a study's validation split: what a model scores that knows the answer format exactly and,
of the task, only how often each label occurs in its training slice (the *label prior*), or nothing at all (a
*uniform guess* over the labels a record offers).

For multiple-choice records the response is a fixed function of (set, label) — ``"the correct answer is
<label>"`` — so such a model puts probability 1 on every format token and ``p(label | set)`` on the label: the
label's add-one smoothed share among the training slice's examples of that set, over the labels the record offers,

    p(l | set) = (c_set(l) + 1) / Σ_{l' offered} (c_set(l') + 1),

so that a label the slice never shows (ARC-Challenge has a handful of training examples in a small slice) is not
impossible. Its token-weighted validation loss, the training loss's own definition, is

    floor = Σ_i −ln p(label_i | set_i) / Σ_i n_i

over the validation examples ``i``, with ``n_i`` the example's loss tokens; the uniform guess puts
``−ln(1 / #offered)`` in the numerator instead. Neither is a floor: on the studied splits the uniform guess scores
*lower* than the label prior (the smoothed training shares fit the 120 validation examples worse than equal
shares), and a model that knows something of the question can be above either. Each comes with its sampling noise
over the validation examples, the standard error of a ratio of sums (delta method),

    se = sqrt(Σ_i (ℓ_i − R n_i)² / (m (m − 1))) / mean(n),   R = Σ ℓ_i / Σ n_i,   m examples,

so a run's distance to a reference can be read against it. Written to ``<results_dir>/label_prior.json`` (one
entry per seed of the study: the sweep's and the finals'), and shown by the summary next to each arm's loss.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from smoa.study.protocol import Study, StudyError

FLOOR_FILE = "label_prior.json"


def reference_losses(train: list, validation: list, items: list[dict[str, list[int]]]) -> dict[str, float]:
    """The reference losses of one split (see the module docstring).

    Args:
        train: training records (their ``dataset`` and ``answer`` give the label shares).
        validation: validation records, aligned with ``items``.
        items: the validation records tokenised for training (``labels`` of −100 outside the loss).

    Returns:
        ``{"label_prior", "label_prior_se", "uniform", "uniform_se", "examples", "loss_tokens", "per_example"}``;
        ``per_example`` holds each validation example's ``uids``, ``label_prior`` and ``uniform`` losses and
        ``tokens``, for a paired comparison with a run's own per-example losses (:func:`paired_difference`).
    """
    from smoa.tasks.commonsense import answer_labels

    shares: dict[str, Counter] = defaultdict(Counter)
    for record in train:
        shares[record.dataset][record.answer] += 1
    prior, uniform, tokens = [], [], []
    for record, item in zip(validation, items, strict=True):
        counts = shares[record.dataset]
        offered = answer_labels(record)
        prior.append(-math.log((counts[record.answer] + 1) / sum(counts[label] + 1 for label in offered)))
        uniform.append(math.log(len(offered)))
        tokens.append(sum(1 for label in item["labels"] if label != -100))
    per_example = {"uids": [r.uid for r in validation], "label_prior": prior, "uniform": uniform, "tokens": tokens}
    prior_value, prior_se = ratio_with_error(prior, tokens)
    uniform_value, uniform_se = ratio_with_error(uniform, tokens)
    return {
        "label_prior": prior_value,
        "label_prior_se": prior_se,
        "uniform": uniform_value,
        "uniform_se": uniform_se,
        "examples": len(validation),
        "loss_tokens": sum(tokens),
        "per_example": per_example,
    }


def paired_difference(run: dict[str, list], reference: dict[str, list], key: str) -> tuple[float, float]:
    """``(D, se)``: a run's token-weighted validation loss minus a reference's on the same examples,
    ``D = Σ (ℓ_i − r_i) / Σ n_i``, with the delta-method standard error of that ratio over the paired examples.

    ``run``: :func:`smoa.study.runner.validation_examples`; ``reference``: the ``per_example`` entry of
    :func:`reference_losses` (``key`` ``label_prior`` or ``uniform``). The examples must be the same, in the same
    order: a mismatch raises :class:`ValueError` naming it (a run and a reference from different splits).
    """
    if run["uids"] != reference["uids"] or run["tokens"] != reference["tokens"]:
        raise ValueError(
            "the run's validation examples are not those of the reference (uids or loss tokens differ); "
            "recompute the reference with smoa study --floor"
        )
    return ratio_with_error([a - b for a, b in zip(run["loss"], reference[key], strict=True)], run["tokens"])


def ratio_with_error(losses: list[float], tokens: list[int]) -> tuple[float, float]:
    """``(R, se)``: the token-weighted mean loss ``R = Σ ℓ_i / Σ n_i`` and its delta-method standard error."""
    m, total = len(losses), sum(tokens)
    if m < 2 or total == 0:
        return (sum(losses) / total if total else math.nan), math.nan
    ratio = sum(losses) / total
    spread = sum((loss - ratio * n) ** 2 for loss, n in zip(losses, tokens, strict=True)) / (m * (m - 1))
    return ratio, math.sqrt(spread) / (total / m)


def write_label_prior(study: Study) -> dict[str, Any]:
    """Compute the floor for every seed of ``study`` (the sweep seed, when an arm is swept, and the final seeds) and
    write ``<results_dir>/label_prior.json`` atomically. Needs the tokenizer and the data, not the model."""
    from smoa.models import load_tokenizer
    from smoa.study.runner import Task, task_recipe
    from smoa.training.checkpoints import write_json_atomic
    from smoa.training.data import load_training_records, tokenize_records

    if study.recipe.task != "commonsense":
        raise StudyError(
            f"study {study.name!r}: the label-prior floor is defined for task commonsense (a response fixed by its "
            f"label), not {study.recipe.task!r}"
        )
    arm = next(iter(study.arms))
    tokenizer = load_tokenizer(study.recipe.model)
    seeds = {}
    swept = any(not a.fixed for a in study.arms.values())
    for kind, seed in [*([("sweep", study.sweep_seed)] if swept else []), *(("final", s) for s in study.seeds)]:
        recipe = task_recipe(study, Task(kind, arm, study.arms[arm].learning_rates[0], seed))
        train, validation = load_training_records(recipe)
        seeds[str(seed)] = reference_losses(train, validation, tokenize_records(validation, tokenizer, recipe))
    record = {"study": study.name, "definition": "reference losses, see smoa.study.floor", "seeds": seeds}
    write_json_atomic(Path(study.results_dir) / FLOOR_FILE, record, non_finite="null")
    return record
