"""The multiple-choice scorer: the shared-prefix fast path equals one forward pass per candidate."""

import torch

from smoa.evaluation.likelihood import choice_log_likelihoods, continuation_log_likelihoods, predict_by_likelihood
from smoa.tasks import commonsense
from smoa.tasks.prompts import SMOA


def reference_log_likelihood(model, context, continuation):
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context) + t - 1, token].item() for t, token in enumerate(continuation))


def test_continuations_match_reference(tiny_model):
    pairs = [([1, 5, 6, 7], [8, 9]), ([1, 10], [11]), ([1, 12, 13, 14, 15, 16], [17, 18, 19])]
    scores = continuation_log_likelihoods(tiny_model, pairs, pad_token_id=0, batch_size=2)
    for (context, continuation), score in zip(pairs, scores, strict=True):
        assert abs(score - reference_log_likelihood(tiny_model, context, continuation)) < 1e-4


def test_shared_prefix_fast_path_matches_reference(tiny_model):
    contexts = [[1, 5, 6], [1, 7, 8, 9, 10]]
    candidates = [
        [[20, 21, 30], [20, 21, 31], [20, 21, 32]],  # differ in the last token: fast path
        [[40], [41, 42]],
    ]  # different lengths: fallback
    scores = choice_log_likelihoods(tiny_model, contexts, candidates, pad_token_id=0, batch_size=4)
    for context, options, row in zip(contexts, candidates, scores, strict=True):
        for option, score in zip(options, row, strict=True):
            assert abs(score - reference_log_likelihood(tiny_model, context, option)) < 1e-4


def test_predict_by_likelihood_picks_the_best_label(tiny_model, tiny_tokenizer):
    records = [
        commonsense.make_record("arc_c", "Which?", ["a", "b", "c"], 0, 0),
        commonsense.make_record("boolq", "is it?", (), 1, 1),
    ]
    predictions = predict_by_likelihood(tiny_model, tiny_tokenizer, records, SMOA, batch_size=2)
    for record, prediction in zip(records, predictions, strict=True):
        context = [
            tiny_tokenizer.bos_token_id,
            *tiny_tokenizer(SMOA.prompt(record), add_special_tokens=False)["input_ids"],
        ]
        labels = commonsense.answer_labels(record)
        scores = [
            reference_log_likelihood(
                tiny_model,
                context,
                tiny_tokenizer(f"the correct answer is {label}", add_special_tokens=False)["input_ids"],
            )
            for label in labels
        ]
        assert prediction == labels[max(range(len(labels)), key=scores.__getitem__)]
