"""Injection shows a progress bar over the layers whose block orders it computes by SVD, only when bars are on."""

from __future__ import annotations

from peft import PeftModel, get_peft_model

import smoa
from smoa._progress import progress_bars
from tests.adapter.conftest import LLAMA_TARGETS, make_llama

BAR = "SMoA block orders (SVD)"


def config() -> smoa.SMoAConfig:
    return smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS)


def test_bar_counts_every_target_layer(monkeypatch, capsys):
    import tqdm.auto

    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.setenv("SMOA_PROGRESS", "1")
    get_peft_model(make_llama(), config())
    assert [(bar.n, bar.total) for bar in bars] == [(10, 10)]  # 2 layers x 5 target modules, each counted once
    assert f"{BAR}:   0%" in capsys.readouterr().err


def test_no_bar_when_off_or_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("SMOA_PROGRESS", "0")
    get_peft_model(make_llama(), config())
    monkeypatch.delenv("SMOA_PROGRESS")
    get_peft_model(make_llama(), config())  # stderr is captured: not a terminal
    monkeypatch.setenv("SMOA_PROGRESS", "1")
    with progress_bars(False):  # a recipe's progress: false
        get_peft_model(make_llama(), config())
    assert BAR not in capsys.readouterr().err


def test_no_bar_when_a_checkpoint_holds_the_orders(monkeypatch, capsys, tmp_path):
    get_peft_model(make_llama(), config()).save_pretrained(tmp_path)
    monkeypatch.setenv("SMOA_PROGRESS", "1")
    PeftModel.from_pretrained(make_llama(), str(tmp_path))
    assert BAR not in capsys.readouterr().err
