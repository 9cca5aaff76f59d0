"""ConvAI2 in ParlAI's self_original format: parsing, HiRA's records, multi-reference merging."""

import pytest

from smoa.tasks import dialogue
from smoa.tasks.records import DataFormatError

FIXTURE = (
    "1 your persona: i like to remodel homes.\n"
    "2 your persona: i like to go hunting.\n"
    "3 hi , how are you doing ?\tyou must be very fast . hunting is one of my favorite hobbies .\n"
    "4 i am ! for my hobby i like to do canning .\ti also remodel homes when i am not out bow hunting .\n"
    "1 your persona: my favorite color is blue.\n"
    "2 __SILENCE__\thello , i love blue .\n"
    "3 cool , me too .\tgreat !\n"
)


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "valid_self_original_no_cands.txt").write_text(FIXTURE)
    (tmp_path / "train_self_original_no_cands.txt").write_text(FIXTURE)
    return tmp_path


def test_parse_dialogues(data_dir):
    dialogues = dialogue.parse_parlai_file(data_dir / "valid_self_original_no_cands.txt")
    assert len(dialogues) == 2
    assert dialogues[0].persona == ["i like to remodel homes.", "i like to go hunting."]
    assert dialogues[0].turns[1] == (
        "i am ! for my hobby i like to do canning .",
        "i also remodel homes when i am not out bow hunting .",
    )


def test_records_follow_hira_format(data_dir):
    records = dialogue.load_convai2(data_dir, "test")
    assert len(records) == 4
    assert records[1].instruction == (
        "Given the dialog history between Q and R is:\n"
        "Q: hi , how are you doing ?\n"
        "R: you must be very fast . hunting is one of my favorite hobbies .\n"
        "Q: i am ! for my hobby i like to do canning .\n\n"
        "Given the personality of the R as: \ni like to remodel homes.\ni like to go hunting.\n\n"
        "Please response to Q according to both the dialog history and the R's personality.\nNow, the R would say:"
    )
    assert records[1].output == "i also remodel homes when i am not out bow hunting ."
    # the responder opened the second dialogue: an empty Q keeps the alternation
    assert "Q: \nR: hello , i love blue .\nQ: cool , me too .\n\n" in records[3].instruction


def test_merge_references():
    records = dialogue.dialogue_records(
        [dialogue.Dialogue(["p"], [("hi", "hello")]), dialogue.Dialogue(["p"], [("hi", "hey there")])]
    )
    [merged] = dialogue.merge_references(records)
    assert merged.references == ("hello", "hey there") and merged.output == "hello"


def test_cut_response():
    assert dialogue.cut_response(" sure , i love it . Q: and you?") == "sure , i love it ."
    assert dialogue.cut_response("R: hmm") == ""
    assert dialogue.cut_response("plain") == "plain"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ConvAI2 cannot be downloaded here"):
        dialogue.load_convai2(tmp_path, "train")
    bad = tmp_path / "valid_self_original_no_cands.txt"
    bad.write_text("1 your persona: x.\n2 hello without a reply\n")
    with pytest.raises(DataFormatError, match=r"no_cands\.txt, line 2: a turn needs"):
        dialogue.load_convai2(tmp_path, "valid")
    bad.write_text("hello\n")
    with pytest.raises(DataFormatError, match="line 1: expected '<turn number> <text>'"):
        dialogue.parse_parlai_file(bad)
