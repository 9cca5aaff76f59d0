"""Scoring rules on tricky strings, and dialogue metrics on small known cases."""

import pytest

from smoa.tasks import scoring


@pytest.mark.parametrize(
    ("text", "dataset", "expected"),
    [
        ("the correct answer is answer3", "arc_c", "answer3"),
        ("answer2 or maybe answer1", "siqa", "answer2"),  # first match wins
        ("The correct answer is Answer3", "obqa", None),  # case-sensitive
        ("", "boolq", None),  # empty generation: no prediction
        ("it is False, no wait, true", "boolq", "true"),
        ("the correct answer is solution12", "piqa", "solution1"),
        ("ending5 then ending4", "hellaswag", "ending4"),  # ending5 is not a HellaSwag label
        ("option2", "winogrande", "option2"),
        ("answer5", "arc_e", "answer5"),
    ],
)
def test_extract_choice(text, dataset, expected):
    assert scoring.extract_choice(text, dataset) == expected


def test_unknown_dataset_pattern():
    with pytest.raises(KeyError, match="no answer pattern"):
        scoring.extract_choice("x", "copa")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sells 9 eggs for $2, so 18.\nThe answer is: 18", 18),
        ("no trigger here, 42", None),
        ("The answer is: 3 apples. Later: The answer is: 7", 7),  # the LAST trigger
        ("The answer is: 1,234", 1234),
        ("The answer is: 1,234,567", 1234),  # the rule's pattern allows one separator
        ("The answer is: 3/4", 1),
        ("The answer is: -3/4", -1),
        ("The answer is: 7/0", 7),  # zero denominator keeps the numerator
        ("The answer is: -12", -12),
        ("The answer is: +5", 5),
        ("The answer is: 2.5", 2),  # round half to even
        ("The answer is: 3.5", 4),
        ("The answer is: $0.75 per egg", 1),
        ("The answer is: twelve", None),
        ("The answer is: ", None),
        ("", None),
    ],
)
def test_metamath_rule(text, expected):
    assert scoring.extract_metamath_answer(text) == expected


def test_gsm8k_gold():
    assert scoring.gsm8k_gold("so 2 + 2 = 4\n#### 1,004") == 1004
    with pytest.raises(ValueError, match="no '#### N'"):
        scoring.gsm8k_gold("no marker")


def test_bleu_identity_and_disjoint():
    refs = [["i like to swim in the lake every morning ."], ["my dog is called max and he is brown ."]]
    assert scoring.bleu4([r[0] for r in refs], refs) == pytest.approx(100.0)
    assert scoring.bleu4(["zzz qqq", "vvv www"], refs) == pytest.approx(0.0)


def test_bleu_uses_all_references():
    single = scoring.bleu4(["i love my brown dog very much"], [["i love my cat so much today"]])
    multi = scoring.bleu4(
        ["i love my brown dog very much"], [["i love my cat so much today", "i love my brown dog very much"]]
    )
    assert multi == pytest.approx(100.0) and single < multi


def test_rouge_l_and_f1_known_values():
    # LCS of "the cat sat" and "the cat ate": "the cat" → P = R = 2/3
    assert scoring.rouge_l(["the cat sat"], [["the cat ate"]]) == pytest.approx(100 * 2 / 3)
    # after removing articles: {cat, sat} vs {cat, ate} → F1 = 0.5
    assert scoring.unigram_f1("The cat sat.", "the cat ate") == pytest.approx(0.5)
    assert scoring.mean_unigram_f1(["x y"], [["a b", "x y"]]) == pytest.approx(100.0)
    assert scoring.unigram_f1("", "a cat") == 0.0


def test_distinct_n():
    assert scoring.distinct_n(["a b a b"], 1) == pytest.approx(50.0)
    assert scoring.distinct_n(["a b a b"], 2) == pytest.approx(100 * 2 / 3)
    assert scoring.distinct_n([""], 2) == 0.0


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory):
    from smoa.assets import nltk_data_dir

    return str(nltk_data_dir(tmp_path_factory.mktemp("cache")))


def test_wordnet_is_prepared_with_lf_line_endings(nltk_data):
    from pathlib import Path

    data = (Path(nltk_data) / "corpora" / "wordnet" / "data.noun").read_bytes()
    assert b"\r\n" not in data and len(data) > 1_000_000


def test_meteor_with_offline_wordnet(nltk_data):
    identical = scoring.meteor(["the cat sat on the mat"], [["the cat sat on the mat"]], nltk_data=nltk_data)
    # one chunk over 6 matched words: fragmentation penalty 0.5 * (1/6)^3
    assert identical == pytest.approx(100 * (1 - 0.5 * (1 / 6) ** 3))
    # "dog" / "hound" share a WordNet synset: a synonym match scores higher than an unrelated word
    synonym = scoring.meteor(["my hound is brown"], [["my dog is brown"]], nltk_data=nltk_data)
    unrelated = scoring.meteor(["my spoon is brown"], [["my dog is brown"]], nltk_data=nltk_data)
    assert synonym > unrelated


def test_bertscore_is_unavailable_not_zero(nltk_data):
    metrics = scoring.dialogue_metrics(["i like dogs"], [["i like cats"]], nltk_data=nltk_data)
    assert metrics["bert_f1"] is None and metrics["bert_p"] is None and metrics["avg"] is None
    assert metrics["bleu"] is not None and 0 <= metrics["rouge_l"] <= 100


def test_bertscore_with_a_local_encoder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "like", "dogs", "cats", "the"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(tmp_path)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(tmp_path)
    score = scoring.bertscore(
        ["i like dogs", "the cats"], [["i like dogs"], ["i like dogs", "the cats"]], tmp_path, layer=2
    )
    assert score["f1"] == pytest.approx(100.0, abs=1e-3)  # identical to one reference each
    other = scoring.bertscore(["cats cats"], [["i like dogs"]], tmp_path, layer=2)
    assert other["f1"] < 100.0


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        scoring.bleu4(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        scoring.rouge_l(["a"], ["a"])
