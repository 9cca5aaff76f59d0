"""The report folder and the ``smoa analyze`` command, end to end on a tiny Llama with an SMoA and a LoRA adapter."""

from __future__ import annotations

import csv
import json

import pytest
from peft import LoraConfig

from smoa import SMoAConfig
from smoa.analysis.calibration import CalibrationError, calibration_prompts, read_prompts
from smoa.baselines import SSMLoRAConfig
from smoa.cli.main import main
from tests.analysis.conftest import TARGETS, adapted, tiny_llama

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("rank_per_layer.png", "spectrum_shift.png", "region_shift.png", "alignment.png", "block_energy.png")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    adapted(base, SMoAConfig(r=8, num_blocks=2, target_modules=TARGETS, init_lora_weights=False)).save_pretrained(
        root / "smoa"
    )
    adapted(base, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)).save_pretrained(root / "lora")
    adapted(base, SSMLoRAConfig(r=4, target_modules=["q_proj"])).save_pretrained(root / "ssmlora")
    (root / "prompts.txt").write_text("the cat sat on the mat\n\nspectra of adapted layers\nanother line of text\n")
    return root


def test_report_renders_with_its_figures(saved, capsys) -> None:
    out = saved / "report"
    code = main([
        "analyze", "--model", str(saved / "base"), "--adapter", str(saved / "smoa"), "--adapter", str(saved / "lora"),
        "--adapter", str(saved / "ssmlora"), "--calibration", str(saved / "prompts.txt"), "--output", str(out),
        "--method", "smoa:r=8", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "smoa" in printed and "lora" in printed and "not analysable" in printed
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for name in FIGURES:
        png = (out / "figures" / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        assert f'href="figures/{name}"' in page and f"(figures/{name})" in markdown
    assert page.count("data:image/png;base64,") == len(FIGURES)
    results = json.loads((out / "results.json").read_text())
    assert [a["method"] for a in results["adapters"]] == ["smoa", "lora", "ssmlora"]
    assert results["adapters"][1]["summary"]["mean_rank"] == 4
    assert "cannot be merged" in results["adapters"][2]["not_analysable"]
    with open(out / "layers.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    with open(out / "summary.csv") as handle:
        assert [row["adapter"] for row in csv.DictReader(handle)] == ["smoa", "lora", "ssmlora"]
    assert (out / "ceilings.csv").is_file()
    assert not list(out.rglob("*.tmp"))


def test_chosen_spectrum_layers_and_unknown_layer(saved, capsys) -> None:
    code = main([
        "analyze", "--model", str(saved / "base"), "--adapter", str(saved / "lora"), "--output",
        str(saved / "r2"), "--spectrum-layer", "layers.1.mlp", "--no-progress",
    ])  # fmt: skip
    assert code == 0 and not (saved / "r2" / "figures" / "alignment.png").exists()  # no calibration
    code = main([
        "analyze", "--model", str(saved / "base"), "--adapter", str(saved / "lora"), "--output",
        str(saved / "r3"), "--spectrum-layer", "no_such_layer", "--no-progress",
    ])  # fmt: skip
    assert code == 0 and (saved / "r3" / "figures" / "spectrum_shift.png").is_file()
    assert "no analysed layer name contains any of ['no_such_layer']" in capsys.readouterr().err


def test_ceiling_only_needs_no_weights(tmp_path, capsys) -> None:
    code = main(["analyze", "--model", "smollm2-135m", "--ceiling-only", "--method", "smoa", "--method", "lora:r=16",
                 "--output", str(tmp_path)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "ceilings.csv")))
    smoa_up = next(r for r in rows if r["method"] == "smoa" and r["layer"] == "up_proj")
    lora_up = next(r for r in rows if r["method"] == "lora" and r["layer"] == "up_proj")
    assert (smoa_up["shape"], smoa_up["rank_ceiling"], lora_up["rank_ceiling"]) == ("1536×576", "576", "16")
    assert "576" in printed and (tmp_path / "report.html").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "smollm2-135m", "--adapter", "{smoa}", "--output", "{out}"], "named config without weights"),
        (["--model", "{base}", "--adapter", "{base}", "--output", "{out}"], "no adapter_config.json"),
        (["--model", "{base}", "--output", "{out}"], "at least one --adapter"),
        (["--model", "{base}", "--adapter", "{smoa}", "--output", "{out}", "--calibration", "missing.txt"], "missing"),
        (["--model", "smollm2-135m", "--ceiling-only", "--method", "nope"], "unknown method"),
    ],
)
def test_user_errors_are_one_clear_line(saved, capsys, argv, message) -> None:
    values = {"smoa": saved / "smoa", "base": saved / "base", "out": saved / "err"}
    code = main(["analyze", *[a.format(**values) for a in argv]])
    assert code == 2
    assert message in capsys.readouterr().err


def test_calibration_files(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"instruction": "two", "input": "x"}\n')
    assert read_prompts(tmp_path / "a.jsonl") == ["one", "two\nx"]
    (tmp_path / "b.json").write_text('[{"text": "one"}, {"text": "two"}, {"text": "three"}]')
    assert read_prompts(tmp_path / "b.json", limit=2) == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"question": "no text field"}\n')
    with pytest.raises(CalibrationError, match=r"c.jsonl, line 2: cannot tell the format from the fields"):
        read_prompts(tmp_path / "c.jsonl")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(chat) + "\n")
    assert read_prompts(tmp_path / "d.jsonl") == ["hi\nhello"]
    (tmp_path / "e.csv").write_text("question,reply\nWhat is two?,2\n")
    with pytest.raises(CalibrationError, match=r"e.csv, line 2: cannot tell the format"):
        read_prompts(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("instruction,output\nWhat is two?,2\n")
    assert read_prompts(tmp_path / "f.csv") == ["What is two?"]
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_prompts(tmp_path / "missing.jsonl")


def test_bad_ceiling_methods_are_one_line_errors(capsys):
    from smoa.cli.main import main

    for method, message in (
        ("nosuch", "unknown method 'nosuch'"),
        ("smoa:r=abc", "r='abc' in 'smoa:r=abc' must be"),
        ("smoa:r=2.5", "must be an integer"),
    ):
        assert main(["analyze", "--model", "smollm2-135m", "--ceiling-only", "--method", method]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def synthetic(label: str, method: str, shift: tuple[float, float, float], null: tuple[float, float, float]):
    """An analysed adapter of one layer with the given region shifts and random-ΔW null shifts."""
    from smoa.analysis.collect import AdapterAnalysis, LayerAnalysis

    regions = ("head", "middle", "tail")
    lora = method == "lora"
    layer = LayerAnalysis(
        name="model.layers.0.self_attn.q_proj", kind="q_proj", block=0, d_out=8, d_in=8, rank=4 if lora else 6,
        relative_rank=4, frobenius=1.0 if lora else 2.0, top_singular=1.0, ceiling=8,
        shift=dict(zip(regions, shift, strict=True)), spectrum_before=[3.0, 2.0, 1.0], spectrum_after=[3.1, 2.1, 1.2],
        intruders=[], random_shift=dict(zip(regions, null, strict=True)),
    )  # fmt: skip
    return AdapterAnalysis(label, "p", method, {}, [layer])


SYNTHETIC = [
    ("smoa-r32", "smoa", (0.0021, 0.012, 0.031), (0.0019, 0.011, 0.029)),
    ("lora-r16", "lora", (0.0040, 0.004, 0.006), (0.0038, 0.0045, 0.0065)),  # reference marks just above the bars
    ("dora", "dora", (-0.001, 0.002, 0.02), (0.0005, 0.002, 0.019)),
]


def test_region_shift_labels_overlap_no_bar_and_no_reference_mark() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from smoa.analysis.report import figure_region_shift

    fig = figure_region_shift([synthetic(*row) for row in SYNTHETIC])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    marks = []
    for ax in fig.axes:
        marks += [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, Rectangle)]
        for line in ax.lines:
            if isinstance(line, Line2D) and line.get_marker() == "_":
                half = line.get_markersize() * fig.dpi / 72 / 2
                for x, y in ax.transData.transform(line.get_xydata()):
                    marks.append(Bbox([[x - half, y - 2], [x + half, y + 2]]))
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text() and "%" in t.get_text()]
    assert len(texts) >= 9  # every value is written somewhere
    for text in texts:
        box = text.get_window_extent(renderer)
        assert not any(box.overlaps(mark) for mark in marks), text.get_text()
    plt.close(fig)


def test_report_opens_with_a_plain_summary_from_its_own_numbers(tmp_path) -> None:
    from smoa.analysis.collect import AdapterAnalysis
    from smoa.analysis.report import plain_summary, write_report

    analyses = [synthetic(*row) for row in SYNTHETIC]
    analyses.append(AdapterAnalysis("ssm", "p", "ssmlora", {}, not_analysable="SSMLoRA updates cannot be merged"))
    lines = plain_summary(analyses)
    smoa, lora = analyses[0].summary(), analyses[1].summary()
    assert lines[0] == (
        "smoa-r32 (smoa) changed 1 layer with updates of mean rank 6 (ceiling 8). The sum of the smallest third of "
        f"W0's singular values moved by +3.1% ({smoa['shift']['tail'] / smoa['random_shift']['tail']:.2f}× the +2.9% "
        "of a random update of the same norm), that of the largest third by +0.21%; no intruder directions."
    )
    assert lines[3] == "ssm (ssmlora) could not be analysed: SSMLoRA updates cannot be merged."
    assert lines[4] == (
        f"Compared with lora-r16 (lora), smoa-r32 has {6 / 4:.2f}× its mean rank, "
        f"{smoa['shift']['tail'] / lora['shift']['tail']:.2f}× its tail shift, {4.0:.2f}× its ‖ΔW‖²_F."
    )
    assert len(lines) == 6  # dora against lora too
    write_report(analyses, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("## In short") < markdown.index("## Summary per adapter")
    assert f"- {lines[4]}" in markdown
    assert "<h2>In short</h2><ul>" in (tmp_path / "report.html").read_text()
