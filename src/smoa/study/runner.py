"""Running a study: one task at a time, each finished task written as one JSON, so a killed study resumes.

Task order (a later task may depend on an earlier one's result, e.g. a final run on the sweep's choice):

1. the learning-rate sweep of the two primary arms (``sweep-<arm>-lr<rate>``, seed ``sweep_seed``, validation loss
   only), with grid extensions where the best rate sits at an end;
2. the base model, evaluated once (``base``);
3. the primary arms' final runs at their chosen rates (``final-<arm>-seed<s>``), evaluated on the test subsample;
4. the generation check of those (``generate-<arm>-seed<s>``);
5. the ablations of the primary arms at their arm's chosen rate (``final-<ablation>-seed<s>``);
6. every other arm: sweep, final runs, its ablations and generation checks.

A task is done when ``<results_dir>/runs/<id>.json`` exists. A training task whose run folder already holds a
finished run (its ``results.json``) is not trained again; one killed mid-training resumes from its newest complete
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoa.study.protocol import Study, choose_rate, rate_label
from smoa.training.checkpoints import write_json_atomic


@dataclass(frozen=True)
class Task:
    """One unit of a study. ``kind`` is sweep, base, final or generate; ``variant`` an arm or ablation name."""

    kind: str
    variant: str | None = None
    learning_rate: float | None = None
    seed: int | None = None

    @property
    def id(self) -> str:
        if self.kind == "base":
            return "base"
        if self.kind == "sweep":
            return f"sweep-{self.variant}-lr{rate_label(self.learning_rate)}"
        return f"{self.kind}-{self.variant}-seed{self.seed}"


def load_results(study: Study) -> dict[str, dict[str, Any]]:
    """Every finished task's JSON in ``<results_dir>/runs``, by id."""
    results = {}
    folder = Path(study.runs_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"study result {path} is not valid JSON ({err}); delete it to run that task again"
            ) from err
        if value.get("id") != path.stem:
            raise ValueError(f"study result {path} holds task {value.get('id')!r}, not {path.stem!r}")
        results[path.stem] = value
    return results


def sweep_state(study: Study, arm: str, results: dict[str, dict[str, Any]]) -> tuple[list[Task], float | None]:
    """``(sweep tasks still to run, chosen rate or None)`` for ``arm`` given the finished results."""
    spec = study.arms[arm]
    if spec.fixed:
        return [], spec.learning_rates[0]
    grid = [Task("sweep", arm, rate, study.sweep_seed) for rate in spec.learning_rates]
    missing = [t for t in grid if t.id not in results]
    if missing:
        return missing, None
    losses = {}
    extensions = 0
    for result in results.values():
        if result["kind"] == "sweep" and result["variant"] == arm:
            losses[result["learning_rate"]] = _loss(result.get("best_val_loss"))
            extensions += result.get("extension", False)
    decision, rate = choose_rate(losses, extensions, study.extend_grid)
    if decision == "extend":
        return [Task("sweep", arm, rate, study.sweep_seed)], None
    return [], rate


def _loss(value: Any) -> float:
    return float(value) if value is not None else math.inf


def tasks_in_order(study: Study, results: dict[str, dict[str, Any]]) -> Iterator[Task]:
    """The tasks not yet done whose prerequisites are, in study order (see the module docstring)."""
    others = [a for a in study.arms if a not in study.primary]
    chosen: dict[str, float | None] = {}
    for arm in study.primary:
        pending, chosen[arm] = sweep_state(study, arm, results)
        yield from pending
    yield Task("base")
    for group in ([*study.primary], *([a] for a in others)):
        for arm in group:
            if arm not in chosen:
                pending, chosen[arm] = sweep_state(study, arm, results)
                yield from pending
        variants = [a for a in group if chosen.get(a) is not None]
        variants += [name for name, ab in study.ablations.items() if ab.of in variants]
        finals = [v for v in variants if v in study.arms] + [v for v in variants if v not in study.arms]
        for variant in finals:
            rate = chosen[variant if variant in study.arms else study.ablations[variant].of]
            for seed in study.seeds:
                yield Task("final", variant, rate, seed)
        for variant in finals:
            if variant in study.evaluation.generate.arms:
                for seed in study.evaluation.generate.seeds:
                    if f"final-{variant}-seed{seed}" in results:
                        yield Task("generate", variant, None, seed)


def check_results(study: Study, results: dict[str, dict[str, Any]]) -> None:
    """Refuse finished training tasks that no longer match the study (its recipe, arm or rate changed): they are
    never silently reused."""
    for done in results.values():
        if done["kind"] not in ("sweep", "final"):
            continue
        if done["variant"] not in study.arms and done["variant"] not in study.ablations:
            continue  # an arm since removed from the study: ignored by the summary as well
        task = Task(done["kind"], done["variant"], done["learning_rate"], done["seed"])
        if done.get("recipe_fingerprint") != task_recipe(study, task).fingerprint():
            raise ValueError(
                f"study result {done['id']}.json was trained with other settings than the study now asks for; "
                f"delete {os.path.join(study.runs_dir, done['id'] + '.json')} and its run folder to redo it, or "
                "restore the study file"
            )


def next_task(study: Study, results: dict[str, dict[str, Any]]) -> Task | None:
    """The first task not done (after :func:`check_results`)."""
    check_results(study, results)
    for task in tasks_in_order(study, results):
        if task.id not in results:
            return task
    return None


# ----------------------------------------------------------------------------------------------------- running
def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import smoa

    return {
        "smoa": smoa.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def task_recipe(study: Study, task: Task):
    """The training recipe of a sweep or final task: the shared recipe with the task's method, rate and seed."""
    method, method_args = study.variant(task.variant)
    return dataclasses.replace(
        study.recipe,
        name=f"{study.name}-{task.id}",
        method=method,
        method_args=method_args,
        learning_rate=task.learning_rate,
        seed=task.seed,
        output_dir=os.path.join(study.output_dir, task.id),
        eval_tasks=[],
    )


def evaluate_adapter(study: Study, adapter_dir: str | None, generate: bool = False) -> dict[str, Any]:
    """Evaluate the base model (``adapter_dir=None``) or a saved adapter on the study's fixed test subsample.

    Returns ``{"evaluation": {task: summary}, "examples": {dataset: {"uids", "correct", "predictions"}}}``.
    """
    from smoa.evaluation.runner import evaluate_task
    from smoa.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(study.recipe.model, dtype=study.recipe.dtype)
    if adapter_dir is not None:
        from smoa.methods import load_adapter

        model = load_adapter(model, adapter_dir)
    model.eval()
    settings = study.evaluation
    gen = settings.generate
    out: dict[str, Any] = {"evaluation": {}, "examples": {}}
    for task in settings.tasks:
        result = evaluate_task(
            model, tokenizer, task,
            limit=gen.limit if generate else settings.limit,
            seed=settings.seed,
            method="generate" if generate else settings.method,
            template=study.recipe.template,
            num_beams=gen.num_beams if generate else None,
            batch_size=gen.batch_size if generate else settings.batch_size,
            progress=False,
            keep_predictions=True,
        )  # fmt: skip
        for dataset, predictions in result.pop("predictions").items():
            out["examples"][dataset] = {
                "uids": [p["uid"] for p in predictions],
                "correct": [int(bool(p["correct"])) for p in predictions],
            }
            if result["method"] == "cloze":  # choice indices, not label texts: kept apart from "predictions"
                out["examples"][dataset]["correct_norm"] = [int(bool(p["correct_norm"])) for p in predictions]
                out["examples"][dataset]["choices"] = [p["prediction"] for p in predictions]
            else:
                out["examples"][dataset]["predictions"] = [
                    p["extracted"] if not generate else p["prediction"] for p in predictions
                ]
        out["evaluation"][task] = result
    return out


def validation_examples(recipe, adapter_dir: str) -> dict[str, list]:
    """Per-example validation losses of a trained adapter: for each validation example ``i`` (in split order), its
    uid, dataset, summed next-token loss over its loss tokens ``ℓ_i = Σ_t −ln p(y_t | y_<t)`` and its count of loss
    tokens ``n_i``. The token-weighted loss is ``Σ ℓ_i / Σ n_i``; stored per example, a run's distance to a reference
    loss on the same examples gets a paired standard error (:func:`smoa.study.floor.paired_difference`)."""
    import torch

    from smoa.methods import load_adapter
    from smoa.models import load_model_and_tokenizer
    from smoa.training.data import load_training_records, tokenize_records

    _, validation = load_training_records(recipe)
    model, tokenizer = load_model_and_tokenizer(recipe.model, dtype=recipe.dtype)
    model = load_adapter(model, adapter_dir)
    model.eval()
    items = tokenize_records(validation, tokenizer, recipe)
    losses, tokens = [], []
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([item["input_ids"]])
            labels = torch.tensor(item["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            kept = labels != -100
            losses.append(float(torch.nn.functional.cross_entropy(logits[kept], labels[kept], reduction="sum")))
            tokens.append(int(kept.sum()))
    return {
        "uids": [r.uid for r in validation],
        "datasets": [r.dataset for r in validation],
        "loss": losses,
        "tokens": tokens,
    }


def diverged_result(run_dir: Path, error: Exception) -> dict[str, Any]:
    """What a sweep records of a diverged run: its validation losses before divergence, and no best loss (so the
    rate ranks last)."""
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "eval_loss" in row and math.isfinite(row["eval_loss"]):
                curve.append((row["step"], row["eval_loss"]))
    return {
        "diverged": str(error),
        "steps": getattr(error, "step", None),
        "val_loss_curve": curve,
        "best_val_loss": None,
        "adapter_dir": None,
    }


def run_task(study: Study, task: Task, results: dict[str, dict[str, Any]], log: Callable[[str], None] = print):
    """Run one task and write its JSON; returns the JSON."""
    from smoa.training.hub import NonFiniteError
    from smoa.training.run_folder import check_finished_run
    from smoa.training.trainer import run_training

    started = time.time()
    record: dict[str, Any] = {
        "id": task.id,
        "kind": task.kind,
        "variant": task.variant,
        "seed": task.seed,
        "study": study.name,
        "versions": _versions(),
    }
    if task.kind == "base":
        record.update(method="base", **evaluate_adapter(study, None))
    elif task.kind == "generate":
        final = results[f"final-{task.variant}-seed{task.seed}"]
        record.update(method=final["method"], learning_rate=final["learning_rate"])
        record.update(evaluate_adapter(study, final["adapter_dir"], generate=True))
    else:
        recipe = task_recipe(study, task)
        run_dir = Path(recipe.run_dir)
        finished = run_dir / "results.json"
        if finished.is_file():
            check_finished_run(recipe, run_dir)  # the study file or its data may have changed since it trained
            log(f"{task.id}: training already finished in {run_dir}; reusing it")
            trained = json.loads(finished.read_text())
        else:
            resume = (run_dir / "run.json").is_file()
            record["resumed"] = resume  # train_seconds then counts the resumed part only
            try:
                trained = run_training(recipe, resume=resume, log=log).__dict__
            except NonFiniteError as error:
                if task.kind != "sweep":
                    raise  # a final run diverging at the rate its sweep chose needs a look, not a silent row
                log(f"{task.id}: {error}")
                trained = diverged_result(run_dir, error)
        record.update(
            method=recipe.method,
            learning_rate=recipe.learning_rate,
            method_args=recipe.method_args,
            recipe=recipe.to_dict(),
            recipe_fingerprint=recipe.fingerprint(),
            extension=task.kind == "sweep" and task.learning_rate not in study.arms[task.variant].learning_rates,
            **{k: trained.get(k) for k in (
                "adapter_dir", "settings", "trainable_params", "params_percent", "train_examples", "steps",
                "tokens_seen", "train_seconds", "peak_memory_mib", "best_checkpoint", "final_train_loss",
                "best_val_loss", "update_rank", "val_loss_curve", "diverged",
            )},
        )  # fmt: skip
        if task.kind == "final":
            record.update(evaluate_adapter(study, trained["adapter_dir"]))
            record["validation_examples"] = validation_examples(recipe, trained["adapter_dir"])
    record["task_seconds"] = round(time.time() - started, 1)
    write_json_atomic(Path(study.runs_dir) / f"{task.id}.json", record)
    return record


def run_study(study: Study, log: Callable[[str], None] = print, max_tasks: int | None = None) -> int:
    """Run tasks until the study is complete (or ``max_tasks`` were run); returns how many ran.

    Every arm's and ablation's method settings are checked first, so that a bad one stops the study before the
    first task, not when its turn comes."""
    from smoa.training.preflight import check_method_settings

    for name in [*study.arms, *study.ablations]:
        method, method_args = study.variant(name)
        check_method_settings(dataclasses.replace(study.recipe, method=method, method_args=method_args))
    count = 0
    while max_tasks is None or count < max_tasks:
        results = load_results(study)
        task = next_task(study, results)
        if task is None:
            log(f"study {study.name}: every task is done ({len(results)} results in {study.runs_dir})")
            break
        log(f"[{time.strftime('%H:%M:%S')}] study {study.name}: {task.id}")
        record = run_task(study, task, results, log)
        summary = record.get("best_val_loss")
        log(
            f"[{time.strftime('%H:%M:%S')}] {task.id} done in {record['task_seconds']} s"
            + (f", best validation loss {summary:.4f}" if summary is not None else "")
        )
        count += 1
    return count
