"""The evaluator end to end on real packaged data with a tiny model, subsampling, and the results table."""

import pytest

from smoa.evaluation import runner
from smoa.tasks import TASKS, dialogue
from smoa.tasks.records import Record


def test_subsample_is_seeded_and_ordered():
    records = [Record(str(i), "", "", uid=str(i)) for i in range(50)]
    first = runner.subsample(records, 10, seed=1)
    assert first == runner.subsample(records, 10, seed=1)
    assert [int(r.uid) for r in first] == sorted(int(r.uid) for r in first)
    assert first != runner.subsample(records, 10, seed=2)
    assert runner.subsample(records, None) == records and runner.subsample(records, 80) == records


@pytest.mark.parametrize("method", ["generate", "loglik"])
def test_commonsense_evaluation_with_tiny_model(tiny_model, tiny_tokenizer, method):
    result = runner.evaluate_task(
        tiny_model,
        tiny_tokenizer,
        "boolq",
        limit=3,
        method=method,
        num_beams=2,
        max_new_tokens=4,
        progress=False,
        keep_predictions=True,
    )
    summary = result["datasets"]["boolq"]
    assert summary["total"] == 3 and summary["size"] == 3270
    predictions = result["predictions"]["boolq"]
    assert summary["correct"] == sum(p["correct"] for p in predictions)
    assert summary["accuracy"] == pytest.approx(100 * summary["correct"] / 3)
    assert result["average"] == summary["accuracy"]
    if method == "loglik":
        assert all(p["prediction"] in ("true", "false") for p in predictions)


def test_empty_generation_scores_wrong(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.setattr(runner, "generate_batched", lambda model, tok, prompts, *a, **k: [""] * len(prompts))
    records = [Record("q\n\nAnswer format: true/false", "the correct answer is true", "true", dataset="boolq")]
    summary, predictions = runner.evaluate_records(tiny_model, tiny_tokenizer, TASKS["boolq"], records, progress=False)
    assert summary["correct"] == 0 and summary["no_answer"] == 1 and predictions[0]["correct"] is False


def test_gsm8k_scoring_uses_metamath_rule(monkeypatch, tiny_model, tiny_tokenizer):
    outputs = ["so 18.\nThe answer is: 18", "18", "The answer is: 1,000"]
    monkeypatch.setattr(runner, "generate_batched", lambda *a, **k: outputs)
    records = [Record("q", "", "18"), Record("q", "", "18"), Record("q", "", "1000")]
    summary, _ = runner.evaluate_records(tiny_model, tiny_tokenizer, TASKS["gsm8k"], records, progress=False)
    assert summary["correct"] == 2 and summary["no_answer"] == 1


def test_dialogue_scoring_merges_references(monkeypatch, tiny_model, tiny_tokenizer):
    records = dialogue.merge_references(
        dialogue.dialogue_records(
            [dialogue.Dialogue(["p"], [("hi", "hello there friend")]), dialogue.Dialogue(["p"], [("hi", "hey")])]
        )
    )
    monkeypatch.setattr(runner, "generate_batched", lambda *a, **k: ["hello there friend"])
    monkeypatch.setattr(runner, "dialogue_metrics", lambda preds, refs, **k: {"bleu": 100.0, "refs": refs})
    summary, predictions = runner.evaluate_records(
        tiny_model, tiny_tokenizer, TASKS["convai2"], records, progress=False
    )
    assert summary["refs"] == [["hello there friend", "hey"]] and predictions[0]["prediction"] == "hello there friend"


def test_loglik_only_for_commonsense(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="log-likelihood scorer is for commonsense"):
        runner.evaluate_records(
            tiny_model, tiny_tokenizer, TASKS["gsm8k"], [Record("q", "", "1")], method="loglik", progress=False
        )


def test_markdown_table_in_paper_column_order():
    names = ["obqa", "boolq", "arc_c", "hellaswag"]
    displays = {"obqa": "OBQA", "boolq": "BoolQ", "arc_c": "ARC-c", "hellaswag": "HellaSwag"}
    result = {
        "datasets": {
            n: {"display": displays[n], "metric": "accuracy", "accuracy": 10.0 * (i + 1)} for i, n in enumerate(names)
        },
        "average": 25.0,
    }
    table = runner.results_markdown(result, label="SmolLM2")
    assert table.splitlines()[0] == "| Model | BoolQ | HellaSwag | ARC-c | OBQA | Avg |"
    assert table.splitlines()[2] == "| SmolLM2 | 20.00 | 40.00 | 30.00 | 10.00 | 25.00 |"


def test_dialogue_table_marks_unavailable_bertscore():
    result = {
        "datasets": {
            "convai2": {
                "display": "ConvAI2",
                "metric": "dialogue",
                "bleu": 1.5,
                "meteor": 10.0,
                "rouge_l": 9.0,
                "f1": 12.0,
                "distinct_1": 5.0,
                "distinct_2": 20.0,
                "bert_p": None,
                "bert_r": None,
                "bert_f1": None,
                "avg": None,
            }
        }
    }
    row = runner.results_markdown(result).splitlines()[2]
    assert row == "| model | 1.50 | 10.00 | 9.00 | 12.00 | 5.00 | 20.00 | n/a | n/a | n/a | n/a |"


def test_each_finished_dataset_is_logged_as_one_line(caplog, tiny_model, tiny_tokenizer):
    with caplog.at_level("INFO", logger="smoa.evaluation.runner"):
        result = runner.evaluate_task(tiny_model, tiny_tokenizer, "boolq", limit=2, max_new_tokens=2, progress=False)
    [record] = caplog.records
    summary = result["datasets"]["boolq"]
    assert (record.task, record.dataset) == ("boolq", "boolq")
    assert record.getMessage() == runner.evaluation_line(summary)
    assert record.getMessage().startswith(f"BoolQ: accuracy {summary['accuracy']:.2f}% ({summary['correct']}/2), ")


def test_evaluation_line_for_each_kind_of_score():
    assert runner.evaluation_line(
        {"display": "GSM8K", "accuracy": 25.0, "correct": 1, "total": 4, "seconds": 3.14}
    ) == ("GSM8K: accuracy 25.00% (1/4), 3.1 s")
    assert runner.evaluation_line({"display": "ConvAI2", "avg": 12.345, "total": 9, "seconds": 2}) == (
        "ConvAI2: avg 12.35 over 9 examples, 2.0 s"
    )
    assert runner.evaluation_line({"display": "mine", "perplexity": 5.5, "total": 3}) == (
        "mine: perplexity 5.50 over 3 examples"
    )
