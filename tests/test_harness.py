"""The cloze scorer against lm-evaluation-harness itself, on the packaged default model and data (slow).

Tolerance: per-choice log-likelihoods agree within 1e-4 nats (float32; batches are padded differently, measured
differences are ~3e-5); the chosen choice (summed and length-normalised) agrees on every example.
"""

import subprocess
import sys

import pytest
import torch

from smoa import harness
from smoa.evaluation.cloze import cloze_log_likelihoods, score_cloze
from smoa.tasks.cloze import load_cloze_items

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


def _argmax(values):
    return max(range(len(values)), key=lambda k: (values[k], -k))


def _assert_same(ours, theirs, norm_texts):
    assert [s["doc_id"] for s in theirs] == list(range(len(ours)))
    for mine, sample, texts in zip(ours, theirs, norm_texts, strict=True):
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert max(abs(a - b) for a, b in zip(mine["log_likelihoods"], lls, strict=True)) <= TOLERANCE
        assert mine["prediction"] == _argmax(lls)
        assert mine["prediction_norm"] == _argmax([ll / len(t) for ll, t in zip(lls, texts, strict=True)])
        assert mine["correct"] == bool(sample["acc"]) and mine["correct_norm"] == bool(sample["acc_norm"])


@pytest.fixture(scope="module")
def default_model():
    from smoa.models import load_model_and_tokenizer

    return load_model_and_tokenizer("default")


@pytest.mark.parametrize("dataset", ["arc_e", "piqa"])
def test_cloze_scores_equal_lm_eval_per_example(default_model, dataset, tmp_path):
    model, tokenizer = default_model
    items = load_cloze_items(dataset)[:100]
    ours = score_cloze(items, cloze_log_likelihoods(model, tokenizer, items, batch_size=16))
    task = harness.HARNESS_TASKS[dataset].name
    raw = harness.evaluate_with_harness(model, tokenizer, [task], limit=100, cache=tmp_path)
    theirs = sorted(raw["samples"][task], key=lambda s: s["doc_id"])
    _assert_same(ours, theirs, [item.norm_texts for item in items])
    assert raw["results"][task]["acc,none"] == pytest.approx(sum(o["correct"] for o in ours) / 100)
    assert raw["results"][task]["acc_norm,none"] == pytest.approx(sum(o["correct_norm"] for o in ours) / 100)


@pytest.fixture(scope="module")
def smoa_adapter(tmp_path_factory, default_model):
    """An SMoA adapter with random (non-zero) factors on the top two layers of the default model."""
    from peft import get_peft_model

    from smoa import SMoAConfig
    from smoa.models import load_model

    torch.manual_seed(0)
    config = SMoAConfig(r=8, num_blocks=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[28, 29],
                        init_lora_weights=False)  # fmt: skip
    folder = tmp_path_factory.mktemp("smoa-adapter")
    get_peft_model(load_model("default"), config).save_pretrained(folder)
    return folder


def test_an_smoa_adapter_evaluates_inside_lm_eval(default_model, smoa_adapter, tmp_path):
    """lm-eval's registered ``smoa`` model and ``--model hf ... peft=`` give our scorer's numbers with the adapter."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from smoa.methods import load_adapter
    from smoa.models import default_model_dir, load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer("default")
    adapted = load_adapter(base, smoa_adapter)
    items = load_cloze_items("arc_e")[:30]
    ours = score_cloze(items, cloze_log_likelihoods(adapted, tokenizer, items, batch_size=16))
    plain = score_cloze(items, cloze_log_likelihoods(default_model[0], default_model[1], items, batch_size=16))
    assert max(abs(a - b) for o, p in zip(ours, plain, strict=True) for a, b in
               zip(o["log_likelihoods"], p["log_likelihoods"], strict=True)) > 1e-3  # fmt: skip  # the adapter acts
    task = harness.HARNESS_TASKS["arc_e"].name
    manager = TaskManager(include_path=str(harness.task_dir(["arc_e"], tmp_path)))
    for model, model_args in (
        ("smoa", {"adapter": str(smoa_adapter)}),
        ("hf", {"pretrained": str(default_model_dir()), "peft": str(smoa_adapter), "dtype": "float32"}),
    ):
        raw = simple_evaluate(model=model, model_args=model_args, tasks=[task], num_fewshot=0, limit=30,
                              task_manager=manager, bootstrap_iters=0, device="cpu")  # fmt: skip
        _assert_same(ours, sorted(raw["samples"][task], key=lambda s: s["doc_id"]), [i.norm_texts for i in items])


def test_smoa_eval_harness_picks_the_examples_of_method_cloze(tmp_path):
    """``smoa eval --harness`` and ``--method cloze`` with the same --limit/--seed score the same examples alike."""
    import json

    common = [sys.executable, "-m", "smoa.cli.main", "eval", "--limit", "12", "--seed", "3", "--predictions"]
    for extra, name in ((["--harness", "smoa_piqa"], "h.json"), (["--task", "piqa", "--method", "cloze"], "c.json")):
        done = subprocess.run([*common, *extra, "--output", str(tmp_path / name), "--no-progress"],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    ours = json.loads((tmp_path / "c.json").read_text())
    theirs = json.loads((tmp_path / "h.json").read_text())
    assert theirs["datasets"]["smoa_piqa"]["accuracy"] == pytest.approx(ours["datasets"]["piqa"]["accuracy"])
    assert theirs["datasets"]["smoa_piqa"]["accuracy_norm"] == pytest.approx(ours["datasets"]["piqa"]["accuracy_norm"])
    mine = [p["log_likelihoods"] for p in ours["predictions"]["piqa"]]
    lm_eval_lls = [p["log_likelihoods"] for p in theirs["predictions"]["smoa_piqa"]]
    assert len(mine) == len(lm_eval_lls) == 12
    for a, b in zip(mine, lm_eval_lls, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= TOLERANCE
