"""Dialogue: ConvAI2 / PersonaChat (self_original) in HiRA's format (HiRA's protocol).

Input files are ParlAI's ``{train,valid}_self_original_no_cands.txt`` (the ``_cands`` variants work too: candidates
are ignored). They are not obtainable offline: get them from ParlAI's ConvAI2 download
(``http://parl.ai/downloads/convai2/convai2_fix_723.tgz``) and pass the folder holding them. The test split is
ParlAI's validation file (1,000 dialogues, 7,801 responder turns).

File format: one numbered line per entry; the number restarts at 1 with each dialogue. ``N your persona: <text>``
lines give the responder's persona; ``N <partner utterance>\\t<responder reply>[\\t<reward>\\t<candidates>]`` lines are
turns. A partner utterance ``__SILENCE__`` means the responder spoke first.

One record per responder turn: the instruction shows the dialogue so far (``Q:`` partner, ``R:`` responder, ending
with the partner's current utterance) and the responder's persona; the output is the gold reply. Records whose
instruction is identical are merged into one multi-reference item for evaluation (:func:`merge_references`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from smoa.tasks.records import DataFormatError, Record

SPLIT_FILES = {
    "train": "train_self_original_no_cands.txt",
    "valid": "valid_self_original_no_cands.txt",
    "test": "valid_self_original_no_cands.txt",
}
GET_CONVAI2 = (
    "ConvAI2 cannot be downloaded here. Get ParlAI's ConvAI2 files (convai2_fix_723.tgz from "
    "http://parl.ai/downloads/convai2/, or `parlai display_data -t convai2` on a machine with network) and pass the "
    "folder holding train_self_original_no_cands.txt and valid_self_original_no_cands.txt with --data-dir"
)
PERSONA_PREFIX = "your persona: "
SILENCE = "__SILENCE__"
STOP_STRINGS = ("Q:", "R:")


@dataclass
class Dialogue:
    """One dialogue: the responder's persona lines and its (partner utterance, responder reply) turns."""

    persona: list[str] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)


def parse_parlai_file(path: str | os.PathLike[str]) -> list[Dialogue]:
    """Parse a ParlAI self_original file into dialogues.

    Raises:
        FileNotFoundError: the file is missing (the message says how to get ConvAI2).
        DataFormatError: a line has no leading number, or a turn line has no tab-separated reply.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ConvAI2 file {path} does not exist. {GET_CONVAI2}")
    dialogues: list[Dialogue] = []
    current: Dialogue | None = None
    previous = 0
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            head, _, body = line.partition(" ")
            if not head.isdigit():
                raise DataFormatError(
                    f"{path}, line {number}: expected '<turn number> <text>' (ParlAI format), got {line[:60]!r}"
                )
            index = int(head)
            if current is None or index <= previous:
                current = Dialogue()
                dialogues.append(current)
            previous = index
            if body.startswith(PERSONA_PREFIX) and "\t" not in body:
                current.persona.append(body[len(PERSONA_PREFIX) :].strip())
                continue
            fields = body.split("\t")
            if len(fields) < 2 or not fields[1].strip():
                raise DataFormatError(
                    f"{path}, line {number}: a turn needs '<partner utterance>\\t<reply>' (field 'labels' missing)"
                )
            current.turns.append((fields[0].strip(), fields[1].strip()))
    return dialogues


def build_instruction(history: Sequence[str], persona: Sequence[str]) -> str:
    """HiRA's instruction; ``history`` alternates partner / responder and ends with the partner's utterance."""
    context = "\n".join(f"{'QR'[i % 2]}: {text}" for i, text in enumerate(history))
    return (
        f"Given the dialog history between Q and R is:\n{context}\n\n"
        f"Given the personality of the R as: \n{chr(10).join(persona)}\n\n"
        "Please response to Q according to both the dialog history and the R's personality.\nNow, the R would say:"
    )


def dialogue_records(dialogues: Sequence[Dialogue], name: str = "convai2") -> list[Record]:
    """One record per responder turn (``uid`` = ``"<dialogue>-<turn>"``)."""
    records = []
    for d_index, dialogue in enumerate(dialogues):
        history: list[str] = []
        for t_index, (partner, reply) in enumerate(dialogue.turns):
            if partner == SILENCE and t_index == 0:
                history.append("")  # the responder opens: keep Q/R alternation with an empty partner turn
            else:
                history.append(partner)
            records.append(
                Record(
                    instruction=build_instruction(history, dialogue.persona),
                    output=reply,
                    answer=reply,
                    dataset=name,
                    uid=f"{d_index}-{t_index}",
                    references=(reply,),
                )
            )
            history.append(reply)
    return records


def merge_references(records: Sequence[Record]) -> list[Record]:
    """Group records with identical instructions into one item whose ``references`` hold every gold reply
    (first-seen order kept; the first reply stays the ``output``)."""
    merged: dict[str, Record] = {}
    for record in records:
        key = record.instruction
        if key in merged:
            kept = merged[key]
            extra = tuple(r for r in (record.references or (record.output,)) if r not in kept.references)
            merged[key] = replace(kept, references=kept.references + extra)
        else:
            merged[key] = replace(record, references=record.references or (record.output,))
    return list(merged.values())


def load_convai2(data_dir: str | os.PathLike[str], split: str = "test") -> list[Record]:
    """Per-turn records of a split (``train``, ``valid`` or ``test`` = ParlAI's validation file)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"ConvAI2 split must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
    return dialogue_records(parse_parlai_file(Path(data_dir) / SPLIT_FILES[split]))


def cut_response(text: str) -> str:
    """A generated reply cut at the first ``Q:`` or ``R:`` (the model starting the next turn), stripped."""
    end = len(text)
    for stop in STOP_STRINGS:
        position = text.find(stop)
        if position >= 0:
            end = min(end, position)
    return text[:end].strip()
