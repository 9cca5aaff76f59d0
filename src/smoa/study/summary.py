"""A study's tables, intervals and figures, recomputed from its per-run JSONs alone.

- Sweep: best validation loss per arm and learning rate; the chosen rate (lowest loss, ties to the smaller rate).
- Finals: accuracy per set and the unweighted average over sets, mean ± sample std over seeds.
- Primary statistic of a difference ``a − b`` of average accuracy (points): the paired t-interval of the per-seed
  differences (:mod:`smoa.study.intervals`), valid for few seeds.
- Secondary: the paired bootstrap of the difference, two levels, paired on both:
  draw the seeds with replacement, and within every set draw the evaluated examples with replacement; the same
  draws apply to both arms (they share seeds and examples). A replicate is
  ``mean over drawn seeds of mean over sets of (acc_a − acc_b on the drawn examples)``; the 95 % interval is the
  2.5th–97.5th percentile of the replicates.
- The half-width of a 95 % interval of one accuracy over its examples: ``1.96 · sqrt(p (1 − p) / n)`` per set,
  and for the average over S sets ``1.96 · sqrt(Σ_s p_s (1 − p_s) / n_s) / S``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smoa.study.intervals import paired_t_interval
from smoa.study.protocol import Study, rate_label
from smoa.study.runner import load_results, sweep_state

COMMONSENSE_ORDER = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa")


def accuracy_half_width(correct: Sequence[Sequence[int]]) -> float:
    """Half-width (points) of the 95 % interval of the mean over sets of per-set accuracies, from 0/1 outcomes
    (:func:`smoa.evaluation.intervals.mean_accuracy_half_width`)."""
    from smoa.evaluation.intervals import mean_accuracy_half_width

    return mean_accuracy_half_width([sum(v) / len(v) for v in correct], [len(v) for v in correct])


def _aligned(results_a: list[dict], results_b: list[dict], datasets: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Per dataset, (seeds, examples) 0/1 arrays of both arms over the same seeds and example ids."""
    by_seed_a = {r["seed"]: r for r in results_a}
    by_seed_b = {r["seed"]: r for r in results_b}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        raise ValueError("the two arms share no seed")
    out = []
    for dataset in datasets:
        reference = by_seed_a[seeds[0]]["examples"][dataset]["uids"]
        rows_a, rows_b = [], []
        for seed in seeds:
            for rows, result in ((rows_a, by_seed_a[seed]), (rows_b, by_seed_b[seed])):
                examples = result["examples"][dataset]
                if examples["uids"] != reference:
                    raise ValueError(f"{result['id']}: {dataset} was evaluated on other examples than the others")
                rows.append(examples["correct"])
        out.append((np.asarray(rows_a, dtype=np.float64), np.asarray(rows_b, dtype=np.float64)))
    return tuple(out)


def paired_bootstrap(
    results_a: list[dict], results_b: list[dict], datasets: Sequence[str], replicates: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Difference of average accuracy ``a − b`` (points) with its paired two-level bootstrap 95 % interval.

    Returns ``{"difference", "low", "high", "p_below_zero", "seeds", "examples"}``: the observed difference (mean
    over the shared seeds of the mean over sets), the interval, and the share of replicates ≤ 0.
    """
    pairs = _aligned(results_a, results_b, datasets)
    rng = np.random.default_rng(seed)
    n_seeds = pairs[0][0].shape[0]
    observed = float(np.mean([np.mean(a - b, axis=1) for a, b in pairs], axis=0).mean() * 100)
    seed_draws = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    total = np.zeros(replicates)
    for a, b in pairs:
        diff = a - b  # (seeds, examples)
        n = diff.shape[1]
        example_draws = rng.integers(0, n, size=(replicates, n))
        # mean over drawn examples for every seed, then over drawn seeds
        per_seed = np.stack([diff[s][example_draws].mean(axis=1) for s in range(n_seeds)], axis=1)  # (R, seeds)
        total += np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)
    total = total / len(pairs) * 100
    low, high = np.percentile(total, [2.5, 97.5])
    return {
        "difference": observed,
        "low": float(low),
        "high": float(high),
        "p_below_zero": float(np.mean(total <= 0)),
        "seeds": n_seeds,
        "examples": int(sum(a.shape[1] for a, _ in pairs)),
    }


def answer_shares(runs: Sequence[dict], datasets: Sequence[str]) -> dict[str, float | None]:
    """How the answers read, in % over all multiple-choice sets and runs: ``parsed`` is the share in which the set's
    answer regex (:func:`smoa.tasks.scoring.extract_choice`) finds a label; ``modal`` is the mean over sets and
    runs of the share taken by the set's most frequent parsed label (100 % when a run always answers the same).
    Sets without an answer regex (free-form answers) or without saved predictions are left out; with none left,
    both are None."""
    from collections import Counter

    from smoa.tasks.scoring import ANSWER_PATTERNS, extract_choice

    parsed, total, modal = 0, 0, []
    for run in runs:
        for dataset in datasets:
            if dataset not in ANSWER_PATTERNS or "predictions" not in run["examples"][dataset]:
                continue
            labels = [extract_choice(text, dataset) for text in run["examples"][dataset]["predictions"]]
            found = [label for label in labels if label is not None]
            parsed += len(found)
            total += len(labels)
            modal.append(100 * Counter(found).most_common(1)[0][1] / len(labels) if found else 0.0)
    if not total:
        return {"parsed": None, "modal": None}
    return {"parsed": 100 * parsed / total, "modal": statistics.fmean(modal)}


def loss_rise(curve: Sequence[Sequence[float]]) -> float:
    """The largest increase of a validation-loss curve ``[[step, loss], ...]`` above its lowest earlier value
    (0 for a curve that never rises): how far a run strays from its best point before the end."""
    rise, lowest = 0.0, math.inf
    for _, loss in curve:
        rise = max(rise, loss - lowest)
        lowest = min(lowest, loss)
    return rise


def _label_prior(study: Study) -> dict[int, dict[str, float]]:
    """seed → the reference losses of the validation split (``label_prior``, ``uniform`` and their ``_se``), from
    ``label_prior.json`` when it was written (:mod:`smoa.study.floor`); empty otherwise. A file of older code holds
    only ``floor`` (the label prior, without its noise)."""
    import json

    from smoa.study.floor import FLOOR_FILE

    path = Path(study.results_dir) / FLOOR_FILE
    if not path.is_file():
        return {}
    try:
        seeds = json.loads(path.read_text())["seeds"]
        return {
            int(seed): {"label_prior": float(entry["floor"])}
            if "label_prior" not in entry
            else {k: float(v) for k, v in entry.items() if k.startswith(("label_prior", "uniform"))}
            | ({"per_example": entry["per_example"]} if "per_example" in entry else {})
            for seed, entry in seeds.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a label-prior file ({error}); rewrite it with smoa study --floor") from None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _datasets(results: list[dict]) -> list[str]:
    names = {d for r in results for d in r["examples"]}
    return sorted(names, key=lambda d: (COMMONSENSE_ORDER.index(d) if d in COMMONSENSE_ORDER else 99, d))


def _accuracy(result: dict, dataset: str) -> float:
    values = result["examples"][dataset]["correct"]
    return 100 * sum(values) / len(values)


def _paired(study: Study, runs: dict[str, list[dict]], datasets: Sequence[str] | None = None) -> list[dict]:
    """The paired bootstrap of every comparison of the study whose two sides both have runs (and share seeds and
    examples); ``datasets`` default to those of the first side's runs."""
    out = []
    for a, b in study.all_comparisons():
        if a in runs and b in runs:
            try:
                stats = paired_bootstrap(runs[a], runs[b], datasets or _datasets(runs[a]), study.bootstrap)
            except ValueError:
                continue
            sets = datasets or _datasets(runs[a])
            by_seed = {side: {r["seed"]: statistics.fmean(_accuracy(r, d) for d in sets) for r in runs[side]}
                       for side in (a, b)}  # fmt: skip
            per_seed = [by_seed[a][s] - by_seed[b][s] for s in sorted(by_seed[a]) if s in by_seed[b]]
            out.append({"a": a, "b": b, **stats, "per_seed": per_seed, "t_interval": paired_t_interval(per_seed)})
    return out


def _paired_to_reference(runs: list[dict[str, Any]], floors: dict[int, dict], key: str) -> list[float] | None:
    """``[D, se]``: the mean over seeds of each run's paired per-example distance to the reference ``key`` at its
    seed (:func:`smoa.study.floor.paired_difference`), ``se = sqrt(Σ se_s²) / S``; None unless every run and every
    seed's reference stored per-example losses (runs of older code did not)."""
    from smoa.study.floor import paired_difference

    if not all("validation_examples" in r and "per_example" in floors.get(r["seed"], {}) for r in runs):
        return None
    pairs = [paired_difference(r["validation_examples"], floors[r["seed"]]["per_example"], key) for r in runs]
    return [statistics.fmean(d for d, _ in pairs), math.sqrt(sum(se**2 for _, se in pairs)) / len(pairs)]


def summarize(study: Study) -> dict[str, Any]:
    """Everything the tables show, from the result JSONs (see the module docstring)."""
    results = load_results(study)
    floors = _label_prior(study)
    sweeps: dict[str, dict[str, Any]] = {}
    for arm in study.arms:
        rows = sorted(
            (r for r in results.values() if r["kind"] == "sweep" and r["variant"] == arm),
            key=lambda r: r["learning_rate"],
        )
        if not rows:
            continue
        pending, chosen = sweep_state(study, arm, results)
        sweeps[arm] = {
            "rates": [r["learning_rate"] for r in rows],
            "best_val_loss": [r["best_val_loss"] for r in rows],
            "final_val_loss": [r["val_loss_curve"][-1][1] if r["val_loss_curve"] else None for r in rows],
            "curves": {rate_label(r["learning_rate"]): r["val_loss_curve"] for r in rows},
            "extensions": [r["learning_rate"] for r in rows if r.get("extension")],
            "diverged": [r["learning_rate"] for r in rows if r.get("diverged")],
            "chosen": chosen,
            "complete": not pending,
        }
    finals: dict[str, list[dict]] = {}
    for r in results.values():
        if r["kind"] == "final":
            finals.setdefault(r["variant"], []).append(r)
    base = results.get("base")
    datasets = _datasets([*(r for rs in finals.values() for r in rs), *([base] if base else [])])
    order = [v for v in [*study.arms, *study.ablations] if v in finals]
    table = {}
    for variant in order:
        runs = sorted(finals[variant], key=lambda r: r["seed"])
        per_set = {d: _mean_std([_accuracy(r, d) for r in runs]) for d in datasets}
        averages = [statistics.fmean(_accuracy(r, d) for d in datasets) for r in runs]
        table[variant] = {
            "method": runs[0]["method"],
            "learning_rate": runs[0]["learning_rate"],
            "seeds": [r["seed"] for r in runs],
            "per_set": per_set,
            "average": _mean_std(averages),
            "average_per_seed": averages,
            "half_width": statistics.fmean(
                accuracy_half_width([r["examples"][d]["correct"] for d in datasets]) for r in runs
            ),
            "trainable_params": runs[0]["trainable_params"],
            "params_percent": runs[0]["params_percent"],
            "update_rank": statistics.fmean(r["update_rank"] for r in runs if r["update_rank"] is not None)
            if any(r["update_rank"] is not None for r in runs) else None,
            "best_val_loss": _mean_std([r["best_val_loss"] for r in runs]),
            "steps": runs[0]["steps"],
            "tokens_seen": runs[0]["tokens_seen"],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "peak_memory_mib": statistics.fmean(r["peak_memory_mib"] for r in runs if r["peak_memory_mib"]),
            "curves": [r["val_loss_curve"] for r in runs],
            "modal": answer_shares(runs, datasets)["modal"],
            "worst_rise": max(loss_rise(r["val_loss_curve"]) for r in runs),
            "above_floor": statistics.fmean(r["best_val_loss"] - floors[r["seed"]]["label_prior"] for r in runs)
            if all(r["seed"] in floors for r in runs) else None,
            "above_uniform": statistics.fmean(r["best_val_loss"] - floors[r["seed"]]["uniform"] for r in runs)
            if all("uniform" in floors.get(r["seed"], {}) for r in runs) else None,
            "above_floor_paired": _paired_to_reference(runs, floors, "label_prior"),
        }  # fmt: skip
    if base:
        table["base"] = {
            "method": "base", "learning_rate": None, "seeds": [], "average_per_seed": [],
            "per_set": {d: (_accuracy(base, d), 0.0) for d in datasets},
            "average": (statistics.fmean(_accuracy(base, d) for d in datasets), 0.0),
            "half_width": accuracy_half_width([base["examples"][d]["correct"] for d in datasets]),
            "modal": answer_shares([base], datasets)["modal"],
        }  # fmt: skip
    comparisons = _paired(study, finals, datasets)
    generated: dict[str, list[dict]] = {}
    for r in results.values():
        if r["kind"] == "generate":
            generated.setdefault(r["variant"], []).append(r)
    generation = {}
    for variant in [v for v in [*study.arms, *study.ablations] if v in generated]:
        runs = sorted(generated[variant], key=lambda r: r["seed"])
        sets = _datasets(runs)
        generation[variant] = {
            "seeds": [r["seed"] for r in runs],
            "per_set": {d: [_accuracy(r, d) for r in runs] for d in sets},
            "average": [statistics.fmean(_accuracy(r, d) for d in sets) for r in runs],
            "half_width": statistics.fmean(
                accuracy_half_width([r["examples"][d]["correct"] for d in sets]) for r in runs
            ),
            "examples": sum(len(runs[0]["examples"][d]["correct"]) for d in sets),
            **answer_shares(runs, sets),
        }
    generation_comparisons = _paired(study, generated)
    return {
        "study": study.name,
        "sweep_seed": study.sweep_seed,
        "fixed_rates": {name: arm.learning_rates[0] for name, arm in study.arms.items() if arm.fixed},
        "sweeps": sweeps,
        "datasets": datasets,
        "finals": table,
        "comparisons": comparisons,
        "generation": generation,
        "generation_comparisons": generation_comparisons,
        "label_prior_floor": {str(seed): value["label_prior"] for seed, value in floors.items()},
        "references": {str(seed): value for seed, value in floors.items()},
        "results": len(results),
    }


# ------------------------------------------------------------------------------------------------------ output
def _display(dataset: str) -> str:
    from smoa.tasks import TASKS

    return TASKS[dataset].display if dataset in TASKS else dataset


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The study's tables as markdown (sweep, final accuracies, paired differences, generation check)."""
    lines: list[str] = []
    if summary.get("fixed_rates"):
        lines += ["### Learning rates (fixed: chosen before this study, not swept here)", ""]
        lines += [f"- {arm}: **{rate:.3g}**" for arm, rate in summary["fixed_rates"].items()]
        lines.append("")
    if summary["sweeps"]:
        lines += ["### Learning-rate sweep (validation loss, lowest over the run; seed of the sweep)", ""]
        for arm, sweep in summary["sweeps"].items():
            cells = [
                f"{rate:.3g}: {'diverged' if rate in sweep['diverged'] else _f(loss, 4)}"
                + (" (extension)" if rate in sweep["extensions"] else "")
                for rate, loss in zip(sweep["rates"], sweep["best_val_loss"], strict=True)
            ]
            chosen = f"**{sweep['chosen']:.3g}**" if sweep["chosen"] is not None else "pending"
            lines.append(f"- {arm}: " + ", ".join(cells) + f" → chosen {chosen}")
        floors = summary.get("label_prior_floor", {})
        sweep_floor = floors.get(str(summary.get("sweep_seed")))
        reference = summary.get("references", {}).get(str(summary.get("sweep_seed")), {})
        if "uniform" in reference:
            lines.append(
                "- reference losses of the validation split at the sweep seed (± standard error over its examples): "
                f"uniform guess {reference['uniform']:.4f} ± {reference['uniform_se']:.4f}, label prior "
                f"{reference['label_prior']:.4f} ± {reference['label_prior_se']:.4f}"
            )
        elif sweep_floor is not None:
            lines.append(f"- label-prior reference loss at the sweep seed: {sweep_floor:.4f} (noise not recorded)")
        lines.append("")
    finals = summary["finals"]
    datasets = summary["datasets"]
    if finals:
        lines += ["### Test accuracy (%), mean ± std over seeds (one seed: its value)", ""]
        header = [
            "Arm",
            "lr",
            "Seeds",
            *(_display(d) for d in datasets),
            "Avg",
            "±95% (examples)",
            "Val loss",
            "Trainable",
            "ΔW rank",
            "Worst rise",
            "Modal",
            *(["Val − prior"] if any(r.get("above_floor") is not None for r in finals.values()) else []),
            *(["Val − uniform"] if any(r.get("above_uniform") is not None for r in finals.values()) else []),
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant, row in finals.items():
            cells = [variant, _f(row["learning_rate"], 4) if row["learning_rate"] else "—", str(len(row["seeds"]))]
            cells += [
                f"{m:.1f} ± {s:.1f}" if len(row["seeds"]) > 1 else f"{m:.1f}"
                for m, s in (row["per_set"][d] for d in datasets)
            ]
            mean, std = row["average"]
            cells.append(f"**{mean:.2f} ± {std:.2f}**" if len(row["seeds"]) > 1 else f"**{mean:.2f}**")
            cells.append(f"± {row['half_width']:.2f}")
            if "best_val_loss" in row:
                cells += [f"{row['best_val_loss'][0]:.4f}", f"{row['trainable_params']:,}", _f(row["update_rank"], 1)]
            else:
                cells += ["—", "0", "—"]
            cells.append("—" if row.get("worst_rise") is None else f"{row['worst_rise']:.3f}")
            cells.append("—" if row.get("modal") is None else f"{row['modal']:.1f} %")
            if "Val − prior" in header:
                paired = row.get("above_floor_paired")
                text = "—" if row.get("above_floor") is None else f"{row['above_floor']:+.4f}"
                cells.append(text + (f" (paired {paired[0]:+.4f} ± {paired[1]:.4f})" if paired else ""))
            if "Val − uniform" in header:
                cells.append("—" if row.get("above_uniform") is None else f"{row['above_uniform']:+.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "Worst rise: the largest increase of a run's validation loss above its lowest earlier value, the worst "
            "seed (the run's adapter is its best checkpoint, so a rise costs nothing but shows instability).",
            "Modal: the share of a set's answers taken by its most frequent label, averaged over sets and seeds "
            "(100 % = always the same answer; the sets have 2–5 labels).",
        ]
        if "Val − prior" in header:
            lines.append(
                "Val − prior / Val − uniform: the best validation loss minus a reference loss at the run's seed, "
                "averaged over seeds. The references are models that know the answer format exactly and, of the "
                "label, only each set's label shares in the training slice (prior) or nothing (uniform guess over "
                "the offered labels; `smoa study --floor`, smoa.study.floor). Neither is a floor: a run can be "
                "below either without using the question, and their sampling noise over 120 validation examples is "
                'given with the sweep. "paired": where the runs stored per-example validation losses, the '
                "token-weighted distance to the label prior on the same examples ± its paired standard error."
            )
        lines.append("")
    if summary["comparisons"]:
        lines += ["### Paired differences of average accuracy (points)", ""]
        lines += [
            "| a − b | per-seed differences | mean | **95 % paired t-interval** | bootstrap interval (secondary) "
            "| seeds | examples per seed |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            t = c.get("t_interval") or {}
            primary = "—" if t.get("low") is None else f"**[{t['low']:+.2f}, {t['high']:+.2f}]**"
            per_seed = ", ".join(f"{d:+.2f}" for d in c.get("per_seed", []))
            lines.append(
                f"| {c['a']} − {c['b']} | {per_seed} | {c['difference']:+.2f} | {primary} | "
                f"[{c['low']:+.2f}, {c['high']:+.2f}] | {c['seeds']} | {c['examples']} |"
            )
        lines += [
            "",
            "Primary: the t-interval of the per-seed differences of average accuracy (t with seeds − 1 degrees of "
            "freedom; smoa.study.intervals), valid for few seeds. Secondary: the paired two-level bootstrap (seeds, "
            "then examples within each set); with 3 seeds its seed level can only reproduce the smallest and largest "
            "per-seed difference, so it is narrower than a 95 % interval and is shown for the example-level noise.",
            "",
        ]
    if summary["generation"]:
        lines += ["### Generation protocol check (beam search, regex scoring; smaller subsample)", ""]
        gen_sets = sorted(
            {d for g in summary["generation"].values() for d in g["per_set"]},
            key=lambda d: COMMONSENSE_ORDER.index(d) if d in COMMONSENSE_ORDER else 99,
        )
        header = ["Arm", "Seeds", *(_display(d) for d in gen_sets), "Avg", "±95% (examples)", "Parsed", "Modal"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant, g in summary["generation"].items():
            cells = [variant, str(len(g["seeds"]))]
            cells += [_f(statistics.fmean(g["per_set"][d]), 1) for d in gen_sets]
            cells.append(f"**{_f(statistics.fmean(g['average']))}**")
            cells.append(f"± {g['half_width']:.2f}")
            cells += ["—" if v is None else f"{v:.1f} %" for v in (g["parsed"], g["modal"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"{next(iter(summary['generation'].values()))['examples']} examples per run. Parsed: answers in which "
            "the set's regex found a label (an unparsed answer counts as wrong). Modal: as above.",
            "",
        ]
        for c in summary.get("generation_comparisons", []):
            lines.append(
                f"- Generation, {c['a']} − {c['b']}: {c['difference']:+.2f} points, 95% CI "
                f"[{c['low']:+.2f}, {c['high']:+.2f}] (paired bootstrap, {c['seeds']} seed(s), {c['examples']} "
                "examples)."
            )
        if summary.get("generation_comparisons"):
            lines.append("")
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close one figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(summary: dict[str, Any], folder: str | Path) -> list[Path]:
    """PNG figures: validation loss vs step per arm at its chosen rate (final runs, mean over seeds), the sweep
    (lowest validation loss vs learning rate, and every sweep run's validation curve), and accuracy per set with
    ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    finals = {k: v for k, v in summary["finals"].items() if v.get("curves")}
    if finals:
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, row in finals.items():
            steps = [s for s, _ in row["curves"][0]]
            curves = [[v for _, v in c] for c in row["curves"] if len(c) == len(steps)]
            mean = np.mean(curves, axis=0)
            ax.plot(steps, mean, marker="o", label=f"{variant} (lr {row['learning_rate']:.3g})")
            if len(curves) > 1:
                ax.fill_between(steps, np.min(curves, axis=0), np.max(curves, axis=0), alpha=0.2)
        seeds = {str(seed) for row in finals.values() for seed in row["seeds"]}
        floors = [v for seed, v in summary.get("label_prior_floor", {}).items() if seed in seeds]
        if floors:
            ax.axhline(statistics.fmean(floors), color="grey", linestyle="--", label="label-prior reference")
        ax.set(xlabel="step", ylabel="validation loss", title="Validation loss at each arm's chosen rate")
        ax.legend()
        written.append(_save(fig, folder / "val_loss.png"))
    if summary["sweeps"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, sweep in summary["sweeps"].items():
            ax.plot(sweep["rates"], sweep["best_val_loss"], marker="o", label=arm)
            if sweep["chosen"] is not None:
                index = sweep["rates"].index(sweep["chosen"])
                ax.scatter(
                    [sweep["chosen"]], [sweep["best_val_loss"][index]], s=120, facecolors="none", edgecolors="black"
                )
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel="lowest validation loss", title="Learning-rate sweep (circle: chosen)")
        ax.legend()
        written.append(_save(fig, folder / "lr_sweep.png"))
        arms = list(summary["sweeps"])
        fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.5), squeeze=False, sharey=True)
        for ax, arm in zip(axes[0], arms, strict=True):
            for label, curve in summary["sweeps"][arm]["curves"].items():
                if curve:
                    ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=f"lr {label}")
            ax.set(title=arm, xlabel="step", yscale="log")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("validation loss")
        written.append(_save(fig, folder / "sweep_curves.png"))
    if summary["finals"]:
        datasets = summary["datasets"]
        variants = list(summary["finals"])
        width = 0.8 / len(variants)
        fig, ax = plt.subplots(figsize=(10, 4))
        x = np.arange(len(datasets) + 1)
        for i, variant in enumerate(variants):
            row = summary["finals"][variant]
            means = [row["per_set"][d][0] for d in datasets] + [row["average"][0]]
            stds = [row["per_set"][d][1] for d in datasets] + [row["average"][1]]
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=variant)
        ax.set_xticks(x, [*(_display(d) for d in datasets), "Avg"])
        ax.set(ylabel="accuracy (%)", title="Test accuracy per set (mean ± std over seeds)")
        ax.legend(fontsize=8, ncol=len(variants))
        written.append(_save(fig, folder / "accuracy.png"))
    return written


MARKERS = r"(<!-- study:{name}:begin[^>]*-->)(.*?)(<!-- study:{name}:end -->)"


def write_summary(study: Study, doc: str | Path | None = None) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.json`` and ``figures/`` into the results folder; when ``doc`` names a
    markdown file holding this study's markers (``<!-- study:<name>:begin ... -->`` and
    ``<!-- study:<name>:end -->``), replace the text between them with the tables."""
    from smoa.training.checkpoints import write_json_atomic, write_text_atomic

    summary = summarize(study)
    folder = Path(study.results_dir)
    text = summary_markdown(summary)
    write_text_atomic(folder / "summary.md", f"# Study {study.name}\n\n{text}")
    lean = {
        **summary,
        "sweeps": {k: {kk: vv for kk, vv in v.items() if kk != "curves"} for k, v in summary["sweeps"].items()},
        "finals": {k: {kk: vv for kk, vv in v.items() if kk != "curves"} for k, v in summary["finals"].items()},
    }
    write_json_atomic(folder / "summary.json", lean, non_finite="null")
    write_figures(summary, folder / "figures")
    if doc is not None and Path(doc).is_file():
        content = Path(doc).read_text()
        pattern = re.compile(MARKERS.format(name=re.escape(study.name)), re.DOTALL)
        if pattern.search(content):
            replaced = pattern.sub(lambda m: f"{m.group(1)}\n{text}\n{m.group(3)}", content, count=1)
            write_text_atomic(doc, replaced)
    return summary
