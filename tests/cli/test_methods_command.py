"""``smoa methods``: the default model works without --model, a wrong model is one line with exit code 2."""

from smoa.cli.main import main


def test_methods_defaults_to_the_packaged_model(capsys):
    assert main(["methods", "--methods", "smoa,lora"]) == 0
    out = capsys.readouterr().out
    assert "smoa" in out and "lora" in out
    assert main(["methods", "--model", "default", "--methods", "smoa"]) == 0


def test_an_unknown_model_is_one_line(capsys):
    assert main(["methods", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoa methods: model 'no-such-model'") and err.count("\n") == 1
