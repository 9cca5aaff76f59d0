"""``smoa eval`` end to end with a tiny local model folder."""

import json
import sys

from smoa.cli.main import main


def test_eval_command_writes_json_and_prints_table(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "result.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--task",
            "winogrande",
            "--limit",
            "4",
            "--method",
            "loglik",
            "--output",
            str(output),
            "--no-progress",
            "--predictions",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Model | WinoGrande |" in printed
    result = json.loads(output.read_text())
    assert result["datasets"]["winogrande"]["total"] == 4 and len(result["predictions"]["winogrande"]) == 4
    assert result["model"] == str(tiny_model_dir) and result["adapter"] is None


def test_eval_command_generation_path(tiny_model_dir, tmp_path):
    output = tmp_path / "gsm8k.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--task",
            "gsm8k",
            "--limit",
            "2",
            "--num-beams",
            "2",
            "--max-new-tokens",
            "3",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(output.read_text())["datasets"]["gsm8k"]
    assert summary["total"] == 2 and summary["size"] == 1319


def test_eval_command_errors(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "copa"]) == 2
    assert "unknown task 'copa'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "absent"), "--task", "boolq"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path), "--task", "boolq"]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "convai2", "--limit", "1"]) == 2
    assert "ConvAI2 cannot be downloaded here" in capsys.readouterr().err


def test_eval_command_on_your_own_file(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "quiz.csv"
    data.write_text("question,reply\nIs the sky blue?,true\nIs grass pink?,false\nIs snow white?,true\n")
    output = tmp_path / "quiz.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "custom", "--data-file", str(data), "--no-progress"]
    fields = ["--field", "instruction=question", "--field", "output=reply"]
    code = main([*argv, *fields, "--metric", "contains", "--max-new-tokens", "3", "--output", str(output)])
    assert code == 0
    assert "| Model | quiz contains | val loss | perplexity | examples |" in capsys.readouterr().out
    summary = json.loads(output.read_text())["datasets"]["quiz"]
    assert summary["total"] == 3 and summary["perplexity"] > 1 and "accuracy" in summary
    assert main([*argv]) == 2  # the columns are not named: one line saying how to map them
    err = capsys.readouterr().err
    assert "quiz.csv, line 2: cannot tell the format" in err and err.count("\n") == 1
    assert main([*argv[:-3], "--no-progress"]) == 2
    assert "--task custom needs --data-file" in capsys.readouterr().err


def test_eval_refuses_a_result_that_is_not_a_number(tiny_model_dir, tmp_path, capsys):
    """Finite but huge factors overflow the outputs to NaN: every scoring path names it in one line, writes nothing."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from smoa import SMoAConfig

    config = SMoAConfig(r=4, num_blocks=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "smoa_" in name:
                parameter.mul_(1e30)
    model.save_pretrained(tmp_path / "huge")
    data = tmp_path / "quiz.jsonl"
    data.write_text(
        '{"instruction": "Is the sky blue?", "output": "yes"}\n{"instruction": "Is ice hot?", "output": "no"}\n'
    )
    base = ["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "huge"), "--no-progress"]
    paths = {
        "loss": ["--task", "custom", "--data-file", str(data), "--metric", "none"],
        "loglik": ["--task", "winogrande", "--limit", "2", "--method", "loglik"],
    }
    for name, argv in paths.items():
        output = tmp_path / f"{name}.json"
        assert main([*base, *argv, "--output", str(output)]) == 2, name
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "not finite" in last or "NaN" in last, (name, err)
        assert "Traceback" not in err and not output.exists(), name


def test_eval_harness_errors_are_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    assert main(["eval", "--model", str(tiny_model_dir)]) == 2
    assert "give --task" in capsys.readouterr().err
    assert main(["eval", "--task", "piqa", "--harness", "smoa_piqa"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--harness", "smoa_piqa,not_a_task"]) == 2
    assert "unknown task not_a_task" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # lm-eval not installed
    assert (
        main(["eval", "--model", str(tiny_model_dir), "--harness", "smoa_piqa", "--output", str(tmp_path / "r.json")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "lm-eval==0.4.13"' in err
    assert not (tmp_path / "r.json").exists()
