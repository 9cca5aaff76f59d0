"""Answer-text (cloze) scoring: items in lm-eval's formats, log-likelihoods equal to a per-choice forward pass, acc
and acc_norm as lm-eval defines them."""

import pytest
import torch

from smoa.evaluation.cloze import cloze_log_likelihoods, encode_pair, score_cloze
from smoa.evaluation.runner import evaluate_task, results_markdown
from smoa.tasks import cloze, commonsense
from smoa.tasks.cloze import ClozeItem
from smoa.tasks.records import DataFormatError


def reference_log_likelihood(model, tokenizer, context, continuation):
    """The obvious way: encode ``context + continuation`` whole, score every token after the context's tokens."""
    while context.endswith(" "):
        context, continuation = context[:-1], " " + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    start = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(log_probs[t - 1, whole[t]].item() for t in range(start, len(whole)))


def test_log_likelihoods_equal_one_forward_pass_per_choice(tiny_model, tiny_tokenizer):
    items = [
        ClozeItem(
            "arc_e", "0", ("Question: which?\nAnswer:",) * 3, (" a task", " an answer", " true"), ("a", "b", "c"), 1
        ),
        ClozeItem("winogrande", "1", ("The instruction", "The response "), (" describes it",) * 2, ("x", "y"), 0),
        ClozeItem("piqa", "2", ("Below is",) * 2, (" an instruction that describes a task.", " false"), ("p", "q"), 1),
    ]
    scores = cloze_log_likelihoods(tiny_model, tiny_tokenizer, items, batch_size=2)
    for item, row in zip(items, scores, strict=True):
        for context, continuation, score in zip(item.contexts, item.continuations, row, strict=True):
            assert score == pytest.approx(
                reference_log_likelihood(tiny_model, tiny_tokenizer, context, continuation), abs=1e-4
            )


def test_trailing_context_spaces_move_to_the_continuation(tiny_tokenizer):
    context_ids, continuation_ids = encode_pair(tiny_tokenizer, "The response ", "describes")
    whole = tiny_tokenizer("The response describes")["input_ids"]
    assert context_ids + continuation_ids == whole
    assert context_ids == tiny_tokenizer("The response")["input_ids"]


def test_acc_and_acc_norm_follow_lm_eval():
    item = ClozeItem("arc_e", "0", ("q",) * 3, (" a", " bbbb", " c"), ("a", "bbbb", "cc"), 1)
    # summed: choice 0 wins (−2); per character: −2/1, −4/4 = −1, −3/2 → choice 1 wins
    [row] = score_cloze([item], [[-2.0, -4.0, -3.0]])
    assert (row["prediction"], row["prediction_norm"], row["correct"], row["correct_norm"]) == (0, 1, False, True)
    [tie] = score_cloze([item], [[-1.0, -1.0, -5.0]])
    assert tie["prediction"] == 0  # numpy.argmax: the first of equal values


def test_items_use_lm_eval_templates():
    piqa = cloze._from_hf_row("piqa", {"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": "1"}, 7)
    assert piqa.contexts == ("Question: Open a jar\nAnswer:",) * 2
    assert piqa.continuations == (" twist", " bite") and piqa.norm_texts == ("twist", "bite") and piqa.gold == 1
    boolq = cloze._from_hf_row("boolq", {"passage": "P.", "question": "is it", "answer": True}, 0)
    assert boolq.contexts[0] == "P.\nQuestion: is it?\nAnswer:" and boolq.continuations == (" no", " yes")
    assert boolq.gold == 1
    siqa = cloze._from_hf_row(
        "siqa", {"context": "C.", "question": "Q?", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}, 0
    )
    assert siqa.contexts[0] == "Q: C. Q?\nA:" and siqa.gold == 2
    wino = cloze._from_hf_row("winogrande", {"sentence": "Ann hid it so _ won.", "option1": "Ann", "option2": "Bo",
                                              "answer": "2"}, 0)  # fmt: skip
    assert wino.contexts == ("Ann hid it so Ann", "Ann hid it so Bo") and wino.continuations == (" won.", " won.")
    assert wino.norm_texts == wino.contexts and wino.gold == 1
    hella = cloze._from_hf_row(
        "hellaswag",
        {"activity_label": "Cook", "ctx_a": "A man [title] cuts.", "ctx_b": "he", "endings": ["a [step] b", "c"],
         "label": "0", "ind": 12},
        0,
    )  # fmt: skip
    assert hella.contexts[0] == "Cook: A man. cuts. He" and hella.norm_texts == ("a b", "c") and hella.uid == "12"


def test_bad_items_are_refused():
    with pytest.raises(DataFormatError, match="gold index 2 outside 2"):
        ClozeItem("piqa", "9", ("q", "q"), (" a", " b"), ("a", "b"), 2)
    with pytest.raises(DataFormatError, match="needs ≥ 2 choices"):
        ClozeItem("piqa", "9", ("q",), (" a",), ("a",), 0)


@pytest.mark.parametrize("name", [d.name for d in commonsense.DATASETS])
def test_packaged_items_match_the_letter_label_records(name):
    """Same examples, same order, same uids and the same gold answer as the letter-label records."""
    items = cloze.load_cloze_items(name)
    records = commonsense.load_packaged_split(name, "eval")
    assert len(items) == len(records) == commonsense.dataset(name).eval_size
    assert [i.uid for i in items] == [r.uid for r in records]
    for item, record in zip(items, records, strict=True):
        labels = commonsense.answer_labels(record)
        if name == "boolq":  # lm-eval's choices are "no", "yes"; the labels are "true", "false"
            labels = ["false", "true"]
        assert len(labels) == len(item.continuations) and labels[item.gold] == record.answer


def test_evaluate_task_cloze_on_a_tiny_model(tiny_model, tiny_tokenizer):
    result = evaluate_task(tiny_model, tiny_tokenizer, "piqa", limit=6, method="cloze", progress=False,
                           keep_predictions=True)  # fmt: skip
    summary = result["datasets"]["piqa"]
    predictions = result["predictions"]["piqa"]
    assert summary["total"] == 6 and summary["size"] == 1838
    assert summary["accuracy"] == pytest.approx(100 * sum(p["correct"] for p in predictions) / 6)
    assert summary["accuracy_norm"] == pytest.approx(100 * sum(p["correct_norm"] for p in predictions) / 6)
    same = evaluate_task(tiny_model, tiny_tokenizer, "piqa", limit=6, method="loglik", progress=False,
                         keep_predictions=True)  # fmt: skip
    assert [p["uid"] for p in predictions] == [p["uid"] for p in same["predictions"]["piqa"]]  # the same examples
    table = results_markdown(result)
    assert "(acc)" in table and "(acc_norm)" in table


def test_cloze_refuses_what_it_cannot_score(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="commonsense sets, not gsm8k"):
        evaluate_task(tiny_model, tiny_tokenizer, "gsm8k", method="cloze", progress=False)
    with pytest.raises(ValueError, match="drop --data-dir"):
        evaluate_task(tiny_model, tiny_tokenizer, "piqa", method="cloze", data_dir=str(tmp_path), progress=False)
