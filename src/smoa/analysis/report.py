"""The report folder: figures (PNG), a self-contained HTML page, a markdown page, and the numbers as JSON and CSV.

Layout of ``<output>/``::

    report.html          one page, figures embedded (base64 PNG): opens offline, can be mailed alone; it opens with
                         a few plain sentences (:func:`plain_summary`) before the tables
    report.md            the same sentences and tables, figures linked from figures/
    results.json         every number (per adapter: settings, summary, per-layer measures and spectra)
    summary.csv          one row per adapter
    layers.csv           one row per adapter × layer
    ceilings.csv         the weights-free rank-ceiling table (when computed)
    figures/*.png        rank_per_layer, spectrum_shift, region_shift, alignment, block_energy

Every file is written to a temporary file in the same folder and moved into place with ``os.replace``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from smoa._io import write_bytes_atomic, write_json_atomic

from . import spectral as S
from .ceilings import CeilingRow
from .collect import AdapterAnalysis, LayerAnalysis

FIGURE_DPI = 110
DEFINITIONS = (
    ("rank", "number of singular values of ΔW above 0.005 (HiRA's count)"),
    ("relative rank", "number of singular values of ΔW above 1e-3 · σ_max(ΔW)"),
    ("ceiling", "the method's analytic bound on rank(ΔW) for that layer (method registry)"),
    ("‖ΔW‖²_F", "squared Frobenius norm of the update, mean over layers"),
    (
        "shift (head / middle / tail)",
        "Σ_R s(W0+ΔW) / Σ_R s(W0) − 1 over the thirds R of the singular index range (largest first); "
        "a positive tail value is the paper's right-tail shift",
    ),
    (
        "random-ΔW tail shift",
        "the tail shift of an i.i.d. Gaussian update with the same ‖ΔW‖_F: any perturbation lifts the smallest "
        "singular values, so a method's tail shift means more the further it is above this null level",
    ),
    (
        "head alignment",
        "mean over the singular directions v_i of a region of Σ_j (v_iᵀ q_j)² over the top third of the eigenvectors "
        "q_j of the layer-input covariance C = XᵀX/N (calibration data, base model); 1/3 for no preference",
    ),
    ("intruders", "top-10 singular vectors of W0+ΔW whose max |cos| with every singular vector of W0 is below 0.5"),
    (
        "block energy",
        "share of ‖W0‖²_F inside SMoA's K aligned diagonal blocks for the spectral / identity / random order",
    ),
)


# ------------------------------------------------------------------------------------------------ writing -------
def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ tables --------
def layer_rows(analyses: Sequence[AdapterAnalysis]) -> list[dict[str, Any]]:
    """One flat row per adapter × layer (scalar measures only; spectra stay in results.json)."""
    rows = []
    for a in analyses:
        for x in a.layers:
            head_before, head_after = x.head_alignment("before"), x.head_alignment("after")
            row = {
                "adapter": a.label, "method": a.method, "layer": x.name, "kind": x.kind, "block": x.block,
                "d_out": x.d_out, "d_in": x.d_in, "rank": x.rank, "relative_rank": x.relative_rank,
                "ceiling": x.ceiling, "frobenius": x.frobenius, "top_singular": x.top_singular,
                **{f"shift_{r}": x.shift[r] for r in S.REGIONS},
                **{f"random_shift_{r}": (x.random_shift or {}).get(r) for r in S.REGIONS},
                "intruders": len(x.intruders),
            }  # fmt: skip
            for r_index, r in enumerate(S.REGIONS):
                row[f"head_alignment_before_{r}"] = head_before[r_index] if head_before else None
                row[f"head_alignment_after_{r}"] = head_after[r_index] if head_after else None
            for order in S.ORDERS:
                row[f"block_energy_{order}"] = x.block_energy[order] if x.block_energy else None
            rows.append(row)
    return rows


def summary_rows(analyses: Sequence[AdapterAnalysis]) -> list[dict[str, Any]]:
    """One flat row per adapter."""
    rows = []
    for a in analyses:
        s = a.summary()
        row = {
            "adapter": a.label, "method": a.method, "layers": s["layers"], "mean_rank": s.get("mean_rank"),
            "mean_relative_rank": s.get("mean_relative_rank"), "mean_ceiling": s.get("mean_ceiling"),
            "mean_frobenius_sq": s.get("mean_frobenius_sq"),
            **{f"shift_{r}": s.get("shift", {}).get(r) for r in S.REGIONS},
            **{f"random_shift_{r}": s.get("random_shift", {}).get(r) for r in S.REGIONS},
            "intruders": s.get("intruders"), "layers_with_intruders": s.get("layers_with_intruders"),
        }  # fmt: skip
        for when in ("before", "after"):
            table = s.get(f"head_alignment_{when}") or {}
            row.update({f"head_alignment_{when}_{r}": table.get(r) for r in S.REGIONS})
        row.update({f"block_energy_{o}": (s.get("block_energy") or {}).get(o) for o in S.ORDERS})
        row["not_analysable"] = s.get("not_analysable", "")
        rows.append(row)
    return rows


def ceiling_rows(rows: Sequence[CeilingRow]) -> list[dict[str, Any]]:
    """The rank-ceiling table flattened: one row per method × layer type."""
    out = []
    for row in rows:
        setting = " ".join(f"{k}={v}" for k, v in row.settings.items() if not isinstance(v, dict))
        for kind, ceiling in row.ceilings.items():
            out.append({
                "method": row.method, "setting": setting, "layer": kind, "shape": row.shapes.get(kind, ""),
                "rank_ceiling": ceiling, "full_rank": row.full_rank.get(kind), "trainable_params": row.trainable_params,
                "params_percent": round(row.params_percent, 4), "mergeable": row.mergeable, "note": row.note,
            })  # fmt: skip
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{value:.{digits}f}" else f"{value}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:+.{digits}g}%"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or math.isnan(value) or math.isnan(reference) or reference == 0:
        return "–"
    return f"{value / reference:.2f}"


def headline_table(analyses: Sequence[AdapterAnalysis]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-adapter summary shown at the top of the report."""
    header = [
        "adapter", "method", "layers", "mean rank", "mean rel. rank", "mean ceiling", "mean ‖ΔW‖²_F",
        "shift head", "shift middle", "shift tail", "tail shift, random ΔW", "tail ÷ random", "intruders (layers)",
        "head alignment Δ (head/mid/tail)",
    ]  # fmt: skip
    rows = []
    for a in analyses:
        s = a.summary()
        if "not_analysable" in s:
            rows.append([a.label, a.method, "0", *(["–"] * 10), f"not analysable: {s['not_analysable']}"])
            continue
        before, after = s.get("head_alignment_before"), s.get("head_alignment_after")
        delta = "–"
        if before and after:
            delta = " / ".join(f"{100 * (after[r] - before[r]):+.2g} pp" for r in S.REGIONS)
        rows.append([
            a.label, a.method, str(s["layers"]), _fmt(s["mean_rank"], 1), _fmt(s["mean_relative_rank"], 1),
            _fmt(s["mean_ceiling"], 1), _fmt(s["mean_frobenius_sq"], 4), _pct(s["shift"]["head"]),
            _pct(s["shift"]["middle"]), _pct(s["shift"]["tail"]), _pct(s.get("random_shift", {}).get("tail")),
            _ratio(s["shift"]["tail"], s.get("random_shift", {}).get("tail")),
            f"{s['intruders']} ({s['layers_with_intruders']})", delta,
        ])  # fmt: skip
    return header, rows


def _times(value: float | None, reference: float | None) -> str | None:
    """``value / reference`` as ``"2.4×"``, None when either is missing or the reference is 0."""
    ratio = _ratio(value, reference)
    return None if ratio == "–" else f"{ratio}×"


def plain_summary(analyses: Sequence[AdapterAnalysis]) -> list[str]:
    """A few sentences for the top of the report, every number taken from the adapters' summaries: per adapter what
    its update is (layers, rank against its ceiling) and how it moved W0's spectrum (tail and head shift, against a
    random update of the same norm); then each adapter against the reference (the LoRA adapter if there is one, else
    the first analysable one)."""
    lines = []
    analysable = []
    for a in analyses:
        s = a.summary()
        if "not_analysable" in s:
            lines.append(f"{a.label} ({a.method}) could not be analysed: {s['not_analysable']}.")
            continue
        analysable.append((a, s))
        ceiling = f" (ceiling {_fmt(s['mean_ceiling'], 1)})" if s.get("mean_ceiling") is not None else ""
        null = s.get("random_shift", {}).get("tail")
        versus = _times(s["shift"]["tail"], null)
        against = f" ({versus} the {_pct(null)} of a random update of the same norm)" if versus else ""
        layers = f"{s['layers']} layer" + ("s" if s["layers"] != 1 else "")
        intruders = (
            f"{s['intruders']} intruder directions in {s['layers_with_intruders']} layers"
            if s["intruders"]
            else "no intruder directions"
        )
        lines.append(
            f"{a.label} ({a.method}) changed {layers} with updates of mean rank {_fmt(s['mean_rank'], 1)}{ceiling}. "
            f"The sum of the smallest third of W0's singular values moved by {_pct(s['shift']['tail'])}{against}, "
            f"that of the largest third by {_pct(s['shift']['head'])}; {intruders}."
        )
    if len(analysable) > 1:
        reference, ref = next(((a, s) for a, s in analysable if a.method == "lora"), analysable[0])
        for a, s in analysable:
            if a is reference:
                continue
            parts = [
                f"{times} its {what}"
                for what, times in (
                    ("mean rank", _times(s["mean_rank"], ref["mean_rank"])),
                    ("tail shift", _times(s["shift"]["tail"], ref["shift"]["tail"])),
                    ("‖ΔW‖²_F", _times(s["mean_frobenius_sq"], ref["mean_frobenius_sq"])),
                )
                if times
            ]
            if parts:
                lines.append(f"Compared with {reference.label} ({reference.method}), {a.label} has {', '.join(parts)}.")
    return lines


# ------------------------------------------------------------------------------------------------ figures -------
def _analysable(analyses: Sequence[AdapterAnalysis]) -> list[AdapterAnalysis]:
    return [a for a in analyses if a.layers]


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _x_positions(layers: Sequence[LayerAnalysis]) -> list[int]:
    return [x.block if x.block is not None else i for i, x in enumerate(layers)]


def figure_rank_per_layer(analyses: Sequence[AdapterAnalysis]):
    """Numerical rank of ΔW per layer, one panel per layer type, one line per adapter, ceilings dashed."""
    items = _analysable(analyses)
    kinds = list(dict.fromkeys(x.kind for a in items for x in a.layers))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds) + 1, 3.6), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for color, a in zip(_colors(len(items)), items, strict=True):
            layers = [x for x in a.layers if x.kind == kind]
            if not layers:
                continue
            xs = _x_positions(layers)
            ax.plot(xs, [x.rank for x in layers], "o-", ms=3, color=color, label=f"{a.label} ({a.method})")
            if all(x.ceiling is not None for x in layers):
                ax.plot(xs, [x.ceiling for x in layers], "--", lw=1, color=color, alpha=0.7)
        ax.set_title(kind)
        ax.set_xlabel("transformer block")
        ax.set_yscale("symlog", linthresh=1)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("numerical rank of ΔW (σ > 0.005)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="--", color="grey"))
    labels.append("analytic ceiling")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.suptitle("Rank of the weight update per layer")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    return fig


def choose_spectrum_layers(analyses: Sequence[AdapterAnalysis], wanted: Sequence[str] | None = None) -> list[str]:
    """Layers for the spectrum figure: those whose name contains one of ``wanted``; default first, middle and last."""
    items = _analysable(analyses)
    if not items:
        return []
    names = [x.name for x in items[0].layers]
    if wanted:
        chosen = [n for w in wanted for n in names if w in n]
        if not chosen:
            raise ValueError(f"no analysed layer name contains any of {list(wanted)}; layers are e.g. {names[:3]}")
        return list(dict.fromkeys(chosen))[:6]
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def figure_spectrum_shift(analyses: Sequence[AdapterAnalysis], layer_names: Sequence[str]):
    """Per chosen layer: singular values of W0 and W0+ΔW (top) and the per-index relative change (bottom)."""
    items = _analysable(analyses)
    fig, axes = plt.subplots(2, len(layer_names), figsize=(4.6 * len(layer_names), 6.2), squeeze=False)
    colors = _colors(len(items))
    for col, name in enumerate(layer_names):
        top, bottom = axes[0][col], axes[1][col]
        base_drawn = False
        for color, a in zip(colors, items, strict=True):
            layer = next((x for x in a.layers if x.name == name), None)
            if layer is None:
                continue
            s0, s1 = np.asarray(layer.spectrum_before), np.asarray(layer.spectrum_after)
            index = np.arange(s0.size)
            if not base_drawn:
                top.plot(index, s0, color="black", lw=2, label="W0")
                base_drawn = True
            top.plot(index, s1, color=color, lw=1, label=f"W0+ΔW {a.label}")
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.where(s0 > 0, s1 / s0 - 1, np.nan) * 100
            bottom.plot(index, change, color=color, lw=1, label=a.label)
        q = len(next(x for x in items[0].layers if x.name == name).spectrum_before)
        for ax in (top, bottom):
            for part in S.region_slices(q)[1:]:
                ax.axvline(part.start, color="grey", ls=":", lw=1)
            ax.grid(True, alpha=0.3)
        for region, part in zip(S.REGIONS, S.region_slices(q), strict=True):
            bottom.text((part.start + part.stop) / 2, 1.0, region, transform=bottom.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="grey")  # fmt: skip
        bottom.axhline(0, color="black", lw=0.8)
        top.set_yscale("log")
        top.set_title(name, fontsize=9)
        top.set_ylabel("singular value")
        bottom.set_ylabel("s(W0+ΔW) / s(W0) − 1  [%]")
        bottom.set_xlabel("singular index (descending)")
        top.legend(fontsize=7)
    fig.suptitle("Singular spectrum before and after fine-tuning (regions: thirds of the index range)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def figure_region_shift(analyses: Sequence[AdapterAnalysis]):
    """Mean relative change of the singular-value mass per region, one panel (own scale) per region; the values and
    the random-ΔW reference are written under each bar, where they cannot overlap the bars or the reference marks."""
    items = _analysable(analyses)
    colors = _colors(len(items))
    panel = max(3.0, 1.1 * len(items))  # each bar keeps room for its label lines
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel + 1.0, 4.2), squeeze=False)
    titles = {"head": "head (largest third)", "middle": "middle third", "tail": "tail (smallest third)"}
    summaries = [a.summary() for a in items]
    for ax, region in zip(axes[0], S.REGIONS, strict=True):
        values = [100 * s["shift"][region] for s in summaries]
        nulls = [100 * s["random_shift"][region] if "random_shift" in s else math.nan for s in summaries]
        ax.bar(range(len(items)), values, color=colors)
        ax.plot(range(len(items)), nulls, "k_", ms=28, mew=2, label="random ΔW, same ‖ΔW‖_F")
        labels = [
            f"{a.label}\n{v:+.3g}%" + ("" if math.isnan(n) else f"\nrandom {n:+.3g}%")
            for a, v, n in zip(items, values, nulls, strict=True)
        ]
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(titles[region])
        ax.margins(y=0.1)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Σ s(W0+ΔW) / Σ s(W0) − 1  [%]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, frameon=False)
    fig.suptitle("Spectrum shift by region, mean over layers")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return fig


def _alignment_grid(layers: Sequence[LayerAnalysis], kinds: list[str], columns: list[int], when: str) -> np.ndarray:
    """``(len(kinds) · 3, len(columns))``: head alignment per (layer type, singular region) row and block column."""
    grid = np.full((3 * len(kinds), len(columns)), np.nan)
    position = {c: i for i, c in enumerate(columns)}
    seen: dict[str, int] = {}
    for x in layers:
        heads = x.head_alignment(when)
        if heads is None:
            continue
        column = x.block if x.block is not None else seen.get(x.kind, 0)
        seen[x.kind] = seen.get(x.kind, 0) + 1
        row = 3 * kinds.index(x.kind)
        grid[row : row + 3, position[column]] = heads
    return grid


def figure_alignment(analyses: Sequence[AdapterAnalysis]):
    """Heatmaps (layer type × singular region) by block: head alignment of W0 and its change after each adapter."""
    items = [a for a in _analysable(analyses) if a.layers[0].alignment_before is not None]
    if not items:
        return None
    kinds = list(dict.fromkeys(x.kind for a in items for x in a.layers))
    columns = sorted({x.block if x.block is not None else i for a in items for i, x in enumerate(a.layers)})
    before = _alignment_grid(items[0].layers, kinds, columns, "before")
    changes = [(a.label, _alignment_grid(a.layers, kinds, columns, "after") - before) for a in items]
    limit = max((float(np.nanmax(np.abs(c))) for _, c in changes if np.isfinite(c).any()), default=0.0) or 1e-9
    panels = [
        (
            "W0 (before): share of the region's singular directions in the top third of C's eigenvectors",
            before,
            "viridis",
            (0.0, max(float(np.nanmax(before)), 1e-9)),
            "share",
        )
    ]
    panels += [(f"{label}: change after fine-tuning (after − before)", c, "RdBu_r", (-limit, limit), "change")
               for label, c in changes]  # fmt: skip
    rows = 3 * len(kinds)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(min(max(6.0, 0.28 * len(columns) + 3.0), 18.0), (0.2 * rows + 1.3) * len(panels)),
        squeeze=False,
    )
    labels = [f"{kind} {region}" for kind in kinds for region in S.REGIONS]
    for ax, (title, data, cmap, (low, high), bar_label) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_yticks(range(rows), labels, fontsize=7)
        for boundary in range(3, rows, 3):
            ax.axhline(boundary - 0.5, color="white", lw=1.5)
        step = max(1, len(columns) // 30)
        ax.set_xticks(range(0, len(columns), step), [str(columns[i]) for i in range(0, len(columns), step)],
                      fontsize=7)  # fmt: skip
        ax.set_xlabel("transformer block")
        ax.set_ylabel("layer type, singular region")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, label=bar_label)
    fig.suptitle("Alignment of right singular directions with the dominant layer-input directions (calibration data)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def figure_block_energy(analyses: Sequence[AdapterAnalysis]):
    """Share of ‖W0‖²_F in SMoA's K diagonal blocks per layer type, for the three orders."""
    items = [a for a in _analysable(analyses) if any(x.block_energy for x in a.layers)]
    if not items:
        return None
    a = next((a for a in items if a.method == "smoa"), items[0])
    kinds = list(dict.fromkeys(x.kind for x in a.layers))
    fig, ax = plt.subplots(figsize=(1.3 * len(kinds) + 3.5, 3.8))
    width = 0.26
    for i, (order, color) in enumerate(zip(S.ORDERS, ("tab:red", "tab:grey", "tab:blue"), strict=True)):
        values = [100 * np.nanmean([x.block_energy[order] for x in a.layers if x.kind == k and x.block_energy])
                  for k in kinds]  # fmt: skip
        ax.bar(np.arange(len(kinds)) + (i - 1) * width, values, width, color=color, label=f"{order} order")
    ax.axhline(100 / a.num_blocks, color="black", ls=":", lw=1, label=f"1/K = {100 / a.num_blocks:.0f}%")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlabel("layer type")
    ax.set_ylabel("share of ‖W0‖²_F in the K blocks [%]")
    ax.set_title(f"Energy of W0 in SMoA's diagonal blocks (K = {a.num_blocks}), mean over layers")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- pages --------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table: one header row, a ``|---|`` rule, one line per row (``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
figure{margin:1.5em 0}figcaption{font-size:0.9em;color:#555}dt{font-weight:600}dd{margin:0 0 0.5em 1.5em}"""


def write_report(
    analyses: Sequence[AdapterAnalysis],
    output: str | os.PathLike[str],
    ceilings: Sequence[CeilingRow] | None = None,
    spectrum_layers: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
    title: str = "Spectral analysis of adapters",
) -> dict[str, Path]:
    """Write the report folder (see the module docstring) and return ``{file key: path}``."""
    output = Path(output)
    meta = dict(meta or {})
    written: dict[str, Path] = {}
    figures: list[tuple[str, str, bytes]] = []  # (file name, caption, png)
    if _analysable(analyses):
        figures.append(("rank_per_layer.png", "Numerical rank of ΔW per layer and method; dashed: analytic ceiling.",
                        _png(figure_rank_per_layer(analyses))))  # fmt: skip
        layers = choose_spectrum_layers(analyses, spectrum_layers)
        figures.append(("spectrum_shift.png", "Singular values of W0 and W0+ΔW for chosen layers, and the relative "
                        "change per index (dotted lines: region boundaries).",
                        _png(figure_spectrum_shift(analyses, layers))))  # fmt: skip
        figures.append(("region_shift.png", "Relative change of the singular-value mass per region, mean over layers.",
                        _png(figure_region_shift(analyses))))  # fmt: skip
        for name, caption, maker in (
            ("alignment.png", "Head alignment of W0's right singular directions by block, layer type and region, "
             "and its change after each adapter (one colour scale for all adapters).", figure_alignment),
            ("block_energy.png", "Share of W0's energy inside SMoA's diagonal blocks: spectral vs identity vs random "
             "order.", figure_block_energy),
        ):  # fmt: skip
            fig = maker(analyses)
            if fig is not None:
                figures.append((name, caption, _png(fig)))
    for name, _, png in figures:
        written[name] = write_bytes_atomic(output / "figures" / name, png)

    results = {"meta": meta, "definitions": dict(DEFINITIONS), "adapters": [a.to_dict() for a in analyses]}
    if ceilings is not None:
        results["ceilings"] = ceiling_rows(ceilings)
    written["results.json"] = write_json_atomic(output / "results.json", results, non_finite="null", sort_keys=False)
    if analyses:
        written["summary.csv"] = write_bytes_atomic(output / "summary.csv", _csv_text(summary_rows(analyses)))
        written["layers.csv"] = write_bytes_atomic(output / "layers.csv", _csv_text(layer_rows(analyses)))
    if ceilings is not None:
        written["ceilings.csv"] = write_bytes_atomic(output / "ceilings.csv", _csv_text(ceiling_rows(ceilings)))

    sections_md = [f"# {title}", ""]
    sections_html = [f"<h1>{html.escape(title)}</h1>"]
    in_short = plain_summary(analyses)
    if in_short:
        sections_md += ["## In short", "", *[f"- {line}" for line in in_short], ""]
        sections_html += ["<h2>In short</h2><ul>", *[f"<li>{html.escape(line)}</li>" for line in in_short], "</ul>"]
    if meta:
        meta_rows = [[k, v] for k, v in meta.items()]
        sections_md += [markdown_table(["", ""], meta_rows), ""]
        sections_html.append(_html_table(["", ""], meta_rows))
    if analyses:
        header, rows = headline_table(analyses)
        sections_md += ["## Summary per adapter", "", markdown_table(header, rows), ""]
        sections_html += ["<h2>Summary per adapter</h2>", _html_table(header, rows)]
        energy: dict[int, tuple[str, dict[str, float]]] = {}  # a property of W0 and K: one row per K
        for a in _analysable(analyses):
            shares = a.summary().get("block_energy")
            if shares and a.num_blocks not in energy:
                energy[a.num_blocks] = (a.label, shares)
        if energy:
            e_header = ["K", "layers of", *[f"{o} order" for o in S.ORDERS]]
            e_rows = [[k, label, *[f"{100 * e[o]:.2f}%" for o in S.ORDERS]] for k, (label, e) in energy.items()]
            caption = "Share of W0's energy in SMoA's K diagonal blocks (mean over layers)"
            sections_md += [f"### {caption}", "", markdown_table(e_header, e_rows), ""]
            sections_html += [f"<h3>{html.escape(caption)}</h3>", _html_table(e_header, e_rows)]
    if ceilings is not None:
        c_rows = [list(row.values()) for row in ceiling_rows(ceilings)]
        c_header = list(ceiling_rows(ceilings)[0]) if c_rows else []
        sections_md += ["## Rank ceilings (from the config, no weights)", "", markdown_table(c_header, c_rows), ""]
        sections_html += ["<h2>Rank ceilings (from the config, no weights)</h2>", _html_table(c_header, c_rows)]
    if figures:
        sections_md += ["## Figures", ""]
        sections_html.append("<h2>Figures</h2>")
    for name, caption, png in figures:
        encoded = base64.b64encode(png).decode("ascii")
        sections_md += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
        sections_html.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(name)}">'
            f'<figcaption>{html.escape(caption)} (<a href="figures/{name}">figures/{name}</a>)</figcaption></figure>'
        )
    sections_md += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS] + [""]
    sections_html.append("<h2>Definitions</h2><dl>")
    sections_html += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS]
    sections_html.append("</dl>")
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>" + "\n".join(sections_html) + "</body></html>\n"
    )
    written["report.html"] = write_bytes_atomic(output / "report.html", page)
    written["report.md"] = write_bytes_atomic(output / "report.md", "\n".join(sections_md))
    return written
