"""Every command that writes a result checks where it will write before it does the work."""

from __future__ import annotations

import os

import pytest

from smoa._io import OutputPathError, check_output_path
from smoa.cli.main import main


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "new" / "r.json", "--output") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"--output .*afile is a file, not a folder"):
        check_output_path(blocker, "--output", folder=True)
    with pytest.raises(OutputPathError, match=r"--output .* is a folder; give a file path"):
        check_output_path(tmp_path, "--output")
    with pytest.raises(OutputPathError, match=r"cannot create .*afile"):
        check_output_path(blocker / "r.json", "--output")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputPathError, match="is not writable"):
            check_output_path(locked / "r.json", "--output")


@pytest.fixture
def no_model(monkeypatch):
    import smoa.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(smoa.models, "load_model_and_tokenizer", refuse)


@pytest.mark.parametrize("task", ["boolq", "custom"])
def test_eval_refuses_an_unwritable_output_before_the_model_loads(task, tmp_path, capsys, no_model):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["eval", "--task", task, "--limit", "1", "--output", str(blocker / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--output" in err and "cannot create" in err


def test_eval_names_an_unknown_task_without_quotes(capsys, no_model):
    code = main(["eval", "--task", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("smoa eval: unknown task 'nope'") and err.count("memorize") == 1


def test_analyze_and_import_refuse_a_file_as_their_output_folder(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["analyze", "--model", "smollm2-135m", "--ceiling-only", "--output", str(blocker)])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err
    code = main(["import-authors", str(tmp_path / "nothing"), "--output", str(blocker / "below")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot create" in err
