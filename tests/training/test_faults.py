"""Faults a careful user runs into: resuming at the last step, a corrupted best checkpoint, divergence, two
processes on one run folder. Each is detected and named; nothing wrong is written as a result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoa.training import load_recipe, run_training
from smoa.training.checkpoints import CheckpointError, list_checkpoints
from smoa.training.hub import NonFiniteError
from smoa.training.run_folder import RunDirError
from tests.training.conftest import tiny_recipe_values


def quiet(*args, **kwargs):
    pass


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_resuming_a_run_at_its_last_step_trains_no_further(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=4, lr_scheduler="constant")
    first = run_training(load_recipe(None, **values), log=quiet)
    want = adapter(tmp_path / "run")
    steps_before = [p.name for p in list_checkpoints(tmp_path / "run")]
    # a kill between the last checkpoint and the adapter: the adapter folder is gone, the last checkpoint remains
    import shutil

    shutil.rmtree(tmp_path / "run" / "adapter")
    (tmp_path / "run" / "results.json").unlink()
    notes = []
    again = run_training(load_recipe(None, **values), resume=True, log=notes.append)
    assert again.steps == first.steps == 4
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == steps_before  # no checkpoint-5
    assert any("nothing left to train" in n for n in notes)
    got = adapter(tmp_path / "run")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert again.best_checkpoint == first.best_checkpoint and again.best_val_loss == first.best_val_loss
    # and --resume of the finished run changes nothing either
    third = run_training(load_recipe(None, **values), resume=True, log=quiet)
    assert third.steps == 4 and [p.name for p in list_checkpoints(tmp_path / "run")] == steps_before


def test_a_corrupted_best_checkpoint_is_named_not_loaded(tiny_model_dir, train_file, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=6, keep_last=1)

    from transformers import TrainerCallback

    class CorruptBest(TrainerCallback):  # flips a byte of the best checkpoint's weights once it is complete
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 6 and state.best_model_checkpoint:
                weights = Path(state.best_model_checkpoint) / "adapter_model.safetensors"
                data = bytearray(weights.read_bytes())
                data[-3] ^= 0x55
                weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is corrupted"):
        run_training(load_recipe(None, **values), callbacks=[CorruptBest()], log=quiet)
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize("learning_rate", [1e6])
def test_divergence_stops_the_run_naming_the_step(tiny_model_dir, train_file, tmp_path, learning_rate):
    values = tiny_recipe_values(
        tiny_model_dir,
        train_file,
        tmp_path / "run",
        max_steps=6,
        learning_rate=learning_rate,
        max_grad_norm=0.0,
        method_args={"r": 4, "num_blocks": 2, "lora_alpha": 1e6},
    )
    with pytest.raises(NonFiniteError, match=r"training diverged at step \d+: .* is not finite") as caught:
        run_training(load_recipe(None, **values), log=quiet)
    assert caught.value.step >= 1
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "results.json").exists()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row.get("loss") != 0.0 for row in logged)  # a NaN is never logged as 0


def test_a_second_process_on_the_same_run_folder_is_refused(tiny_model_dir, train_file, tmp_path):
    import subprocess
    import sys
    import textwrap

    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=2)
    recipe = load_recipe(None, **values)
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2] / "src")!r})
        from smoa.training import load_recipe
        from smoa.training.run_folder import prepare_run_dir
        lock = prepare_run_dir(load_recipe(None, **{values!r}), False, False)
        print("locked", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"in use by process {process.pid}"):
            run_training(recipe, resume=True, log=quiet)
    finally:
        process.kill()
        process.wait()
    # the holder died without unlocking (SIGKILL): its stale lock does not block the next run
    result = run_training(recipe, resume=True, log=quiet)
    assert result.steps == 2


def test_user_mistakes_in_training_get_one_line_errors(tiny_model_dir, train_file, tmp_path):
    from smoa.cli.main import main
    from smoa.training.hub import training_arguments
    from smoa.training.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"precision='fp16' needs a CUDA GPU"):
        training_arguments(load_recipe(None, precision="fp16"), tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    values = tiny_recipe_values(tiny_model_dir, empty, tmp_path / "run")
    with pytest.raises(RecipeError, match=r"the file holds no training records"):
        run_training(load_recipe(None, **values), log=quiet)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"\n')
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--set",
            f"train_file={bad}",
            "--set",
            "eval_tasks=[]",
            "--output-dir",
            str(tmp_path / "run2"),
        ]
    )
    assert code == 2
    for option in (["--batch-size", "0"], ["--num-beams", "0"]):
        with pytest.raises(SystemExit) as caught:
            main(["eval", "--task", "boolq", *option])
        assert caught.value.code == 2


def test_what_a_kill_during_the_final_save_left_is_recovered(tiny_model_dir, train_file, tmp_path):
    import shutil

    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=2)
    run_training(load_recipe(None, **values), log=quiet)
    run = tmp_path / "run"
    want = adapter(run)
    # killed between moving the old adapter aside and moving the new one in: both are staging folders
    (run / ".adapter-old").mkdir()
    for item in (run / "adapter").iterdir():
        shutil.copy(item, run / ".adapter-old" / item.name)
    shutil.rmtree(run / "adapter")
    (run / ".adapter-x1y2").mkdir()
    run_training(load_recipe(None, **values), resume=True, log=quiet)
    assert not list(run.glob(".adapter-*"))
    got = adapter(run)
    for key in want:
        assert torch.equal(got[key], want[key])


def test_a_full_disk_is_named_and_earlier_checkpoints_survive(tiny_model_dir, train_file, tmp_path):
    import os
    import subprocess

    from smoa.training.checkpoints import latest_valid_checkpoint, verify_checkpoint
    from smoa.training.run_folder import DiskFullError

    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("needs root and tmpfs to make a small disk")
    try:
        values = tiny_recipe_values(tiny_model_dir, train_file, mount / "run", max_steps=40, keep_last=30)
        with pytest.raises(DiskFullError, match=r"the disk holding .* is full .* continue with --resume"):
            run_training(load_recipe(None, **values), log=quiet)
        intact = latest_valid_checkpoint(mount / "run", warn=quiet)
        assert intact is not None
        verify_checkpoint(intact)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_resume_from_a_chosen_checkpoint_on_the_command_line(tiny_model_dir, train_file, tmp_path):
    from smoa.cli.main import main

    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--set", f"train_file={train_file}", "--set", "eval_tasks=[]",
            "--set", "method_args={r: 4, num_blocks: 2}", "--set", "val_size=8", "--set", "batch_size=4",
            "--set", "micro_batch_size=2", "--set", "eval_steps=2", "--set", "save_steps=2", "--set", "progress=false",
            "--max-steps", "4", "--output-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--resume-from", str(run / "checkpoint-2")]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    assert main([*args, "--resume-from", str(run / "checkpoint-99")]) == 2  # named, one line


def test_resume_refuses_training_data_changed_since_the_run(tiny_model_dir, train_file, tmp_path, capsys):
    """The recipe's fingerprint hashes the data's path; the run also records the data's content, so a file edited
    between a run and its --resume is named, on the library and the command-line path alike."""
    import shutil

    from smoa.cli.main import main

    data = tmp_path / "commonsense_170k.json"
    shutil.copy(train_file, data)
    values = tiny_recipe_values(tiny_model_dir, str(data), tmp_path / "run", max_steps=2)
    run_training(load_recipe(None, **values), log=quiet)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["data_sha256"]
    run_training(load_recipe(None, **values), resume=True, log=quiet)  # unchanged data: resumes
    rows = json.loads(data.read_text())
    data.write_text(json.dumps(rows[1:] + rows[:1]))  # the same records, reordered
    with pytest.raises(RunDirError, match=r"trained on other data: train_file .*commonsense_170k.json has changed"):
        run_training(load_recipe(None, **values), resume=True, log=quiet)
    with pytest.raises(RunDirError, match="trained on other data"):
        run_training(load_recipe(None, **{**values, "max_steps": 4}), resume=True, log=quiet)  # extending, too
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_sha256"] == recorded  # nothing rewritten
    args = ["train", "--model", str(tiny_model_dir), "--set", f"train_file={data}", "--output-dir",
            str(tmp_path / "run"), "--resume"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2 and "trained on other data" in capsys.readouterr().err
    run_training(load_recipe(None, **values), overwrite=True, log=quiet)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_sha256"] != recorded
