"""Training runs on a tiny model: results, checkpoints, the run-folder guard, exact resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoa.training import load_recipe, run_training
from smoa.training.checkpoints import MANIFEST, CheckpointError, latest_valid_checkpoint
from smoa.training.run_folder import RunDirError
from tests.training.conftest import commonsense_rows, tiny_recipe_values

SRC = str(Path(__file__).parents[2] / "src")


def quiet(*args, **kwargs):
    pass


def test_train_writes_adapter_checkpoints_metrics_and_results(tiny_model_dir, train_file, tmp_path):
    recipe = load_recipe(
        None,
        **tiny_recipe_values(
            tiny_model_dir,
            train_file,
            tmp_path / "run",
            eval_tasks=["boolq"],
            eval_limit=4,
            eval_method="loglik",
            learning_rate=0.05,
        ),
    )
    result = run_training(recipe, log=quiet)
    run = Path(result.run_dir)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert result.steps == 6 and result.train_examples == 40
    checkpoints = sorted(p.name for p in run.glob("checkpoint-*"))
    assert "checkpoint-6" in checkpoints and len(checkpoints) <= 2  # the last one and the best one
    assert all((run / c / MANIFEST).is_file() for c in checkpoints)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in logged) and any("eval_loss" in row for row in logged)
    saved = json.loads((run / "results.json").read_text())
    assert saved["trainable_params"] == result.trainable_params > 0
    assert result.update_rank is not None and result.update_rank > 4  # far above the total branch rank r=4
    assert result.evaluation["boolq"]["datasets"]["boolq"]["total"] == 4
    assert result.best_val_loss == min(r["eval_loss"] for r in logged if "eval_loss" in r)


def test_train_uses_the_recipes_rate_for_its_method(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(
        tiny_model_dir, train_file, tmp_path / "run", max_steps=1, method_learning_rates={"smoa": 2e-2, "lora": 1e-4}
    )
    lines = []
    run_training(load_recipe(None, **values), log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]
    assert recorded["learning_rate"] == 2e-2 and recorded["method"] == "smoa"
    assert "smoa: learning_rate 0.02 for smoa (method_learning_rates)" in lines


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_is_what_the_recipe_says_on_cpu(tiny_model_dir, train_file, tmp_path, monkeypatch, precision):
    """``precision: bf16`` computes the forward in bfloat16 (autocast) on a CPU too, also on the loss path that
    applies the LM head at labelled positions only; the factors and the optimizer stay float32."""
    import smoa.training.trainer as trainer_module

    seen: set[torch.dtype] = set()
    build = trainer_module.build_model

    def recording(recipe):
        model, tokenizer, plan = build(recipe)
        q_proj = next(m for name, m in model.named_modules() if name.endswith("layers.0.self_attn.q_proj"))
        q_proj.register_forward_hook(lambda module, args, output: seen.add(output.dtype) if module.training else None)
        return model, tokenizer, plan

    monkeypatch.setattr(trainer_module, "build_model", recording)
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=2, precision=precision)
    result = run_training(load_recipe(None, **values), log=quiet)
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    saved = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    assert {v.dtype for k, v in saved.items() if "smoa_A" in k or "smoa_B" in k} == {torch.float32}


def test_run_folder_guard(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=2)
    run_training(load_recipe(None, **values), log=quiet)
    with pytest.raises(RunDirError, match="already holds this run; pass --resume"):
        run_training(load_recipe(None, **values), log=quiet)
    other = load_recipe(None, **{**values, "learning_rate": 1e-2})
    with pytest.raises(RunDirError, match=r"holds a different run \(learning_rate 0.005 → 0.01\); choose"):
        run_training(other, resume=True, log=quiet)
    run_training(other, overwrite=True, log=quiet)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no smoa run"):
        run_training(load_recipe(None, **{**values, "output_dir": str(foreign)}), log=quiet)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_finished_run_is_trained_further_with_resume(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=4)
    first = run_training(load_recipe(None, **values), log=quiet)
    shorter = load_file(Path(first.adapter_dir) / "adapter_model.safetensors")
    longer = load_recipe(None, **{**values, "max_steps": 6})
    with pytest.raises(RunDirError, match=r"\(max_steps 4 → 6\); pass --resume to train it further"):
        run_training(longer, log=quiet)
    result = run_training(longer, resume=True, log=quiet)
    run = Path(result.run_dir)
    assert result.steps == 6 and (run / "checkpoint-6").is_dir()
    kept = load_file(run / "adapter-step4" / "adapter_model.safetensors")  # the shorter run's adapter, unchanged
    assert kept.keys() == shorter.keys() and all(torch.equal(kept[k], shorter[k]) for k in kept)
    assert json.loads((run / "results-step4.json").read_text())["steps"] == 4
    assert json.loads((run / "run.json").read_text())["extended_from"] == [{"step": 4, "max_steps": 4}]
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 6
    with pytest.raises(RunDirError, match=r"max_steps 6 → 5"):  # fewer steps is another run, not an extension
        run_training(load_recipe(None, **{**values, "max_steps": 5}), resume=True, log=quiet)


def test_a_run_that_stopped_before_training_starts_again(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"fingerprint": "0", "recipe": {"learning_rate": 1.0}}))
    assert run_training(load_recipe(None, **values), log=quiet).steps == 2


KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {src!r})
    from transformers import TrainerCallback
    from smoa.training import load_recipe, run_training

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == {kill_at} and not {after_save}:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_save(self, args, state, control, **kwargs):  # the checkpoint is complete (manifest written)
            if state.global_step == {kill_at} and {after_save}:
                os.kill(os.getpid(), signal.SIGKILL)

    values = json.loads({values!r})
    callbacks = [KillAt()] if {kill_at} > 0 else []
    run_training(load_recipe(None, **values), resume={resume}, callbacks=callbacks, log=lambda *a: None)
    """
)


def run_script(values: dict, kill_at: int = 0, resume: bool = False, after_save: bool = False):
    script = KILL_SCRIPT.format(
        src=SRC, kill_at=kill_at, values=json.dumps(values), resume=resume, after_save=after_save
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def free_port() -> str:
    """A TCP port nothing listens on now (the OS picks it), so parallel runs never collide on a fixed one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_after_sigkill_ends_with_the_same_adapter(tiny_model_dir, train_file, tmp_path, group_by_length):
    common = dict(
        max_steps=8,
        method_args={"r": 4, "num_blocks": 2, "lora_alpha": 8, "lora_dropout": 0.1},
        group_by_length=group_by_length,
    )
    straight = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "straight", **common)
    assert run_script(straight).returncode == 0
    killed = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "killed", **common)
    first = run_script(killed, kill_at=5)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not (tmp_path / "killed" / "adapter").exists()
    assert latest_valid_checkpoint(tmp_path / "killed", warn=quiet).name == "checkpoint-4"
    second = run_script(killed, resume=True)
    assert second.returncode == 0, second.stderr[-2000:]
    want, got = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "killed")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(("kill_at", "after_save"), [(1, False), (2, True), (7, False), (8, True)])
def test_resume_at_every_kind_of_step_boundary_matches_the_uninterrupted_run(
    tiny_model_dir, train_file, tmp_path, kill_at, after_save
):
    """Killed mid-way between checkpoints, right after one, or after the last one (before the adapter): the resumed
    run ends with the uninterrupted run's adapter and its step count."""
    common = dict(max_steps=8, lr_scheduler="constant", method_args={"r": 4, "num_blocks": 2, "lora_dropout": 0.0})
    straight = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "straight", **common)
    assert run_script(straight).returncode == 0
    killed = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "killed", **common)
    assert run_script(killed, kill_at=kill_at, after_save=after_save).returncode == -signal.SIGKILL
    second = run_script(killed, resume=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["steps"] == 8
    assert not (tmp_path / "killed" / "checkpoint-9").exists()
    want, got = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "killed")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_corrupted_and_incomplete_checkpoints_are_named(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=4)
    run_training(load_recipe(None, **values), log=quiet)
    run = tmp_path / "run"
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    optimizer = newest / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupted"):
        run_training(load_recipe(None, **values), resume_from=str(newest), log=quiet)
    partial = run / "checkpoint-99"
    partial.mkdir()
    notes = []
    older = latest_valid_checkpoint(run, warn=notes.append)  # falls back past both, saying why
    assert older is not None and older != newest and older.name.startswith("checkpoint-")
    assert "checkpoint-99" in notes[0] and "incomplete" in notes[0]
    assert newest.name in notes[1] and "optimizer.pt is corrupted" in notes[1]


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {src!r})
    from smoa.training import load_recipe, run_training
    run_training(load_recipe(None, **json.loads({values!r})), log=lambda *a: None)
    """
)


def test_two_process_ddp_matches_single_process(tiny_model_dir, tmp_path):
    # 4 training examples and a global batch of 4: every step sees the same examples in both runs, whatever order
    # each sampler draws them in, so the adapters must agree up to summation order
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(commonsense_rows(12, seed=3)))
    common = dict(max_steps=3, batch_size=4, micro_batch_size=2, eval_steps=3, save_steps=3, learning_rate=0.05)
    single = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "single", **common)
    assert (
        subprocess.run(
            [sys.executable, "-c", DDP_SCRIPT.format(src=SRC, values=json.dumps(single))],
            capture_output=True,
            text=True,
            timeout=300,
        ).returncode
        == 0
    )
    ddp = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "ddp", **common)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(src=SRC, values=json.dumps(ddp)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = adapter_tensors(tmp_path / "single"), adapter_tensors(tmp_path / "ddp")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


def test_memorize_task_trains_on_every_pair_and_evaluates_on_them(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(
        tiny_model_dir, train_file, tmp_path / "run", task="memorize", max_steps=2, eval_tasks=["memorize"],
        eval_limit=4,
    ) | {"train_file": None}  # fmt: skip
    result = run_training(load_recipe(None, **values), log=quiet)
    assert result.train_examples == 512  # every pair is trained on; validation is a sample of the same pairs
    summary = result.evaluation["memorize"]["datasets"]["memorize"]
    assert summary["total"] == 4 and 0 <= summary["char_accuracy"] <= 100
    from smoa.training.data import load_training_records
    from smoa.training.recipe import RecipeError

    with pytest.raises(RecipeError, match="train_limit does not apply to task=memorize"):
        load_training_records(load_recipe(None, **{**values, "train_limit": 10}))
