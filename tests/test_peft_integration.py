"""Out-of-tree PEFT methods: the peft_type enum behaves like PEFT's, registration is safe, versions and tags."""

from __future__ import annotations

import json

import peft
import peft.mapping
import pytest
from packaging.version import Version
from peft import PeftType

import smoa
import smoa.baselines
from smoa.peft_integration import (
    SUPPORTED_PEFT,
    OutOfTreePeftType,
    check_peft_version,
    register_peft_tuner,
    tag_base_model,
)
from tests.tiny import tiny_llama

MAPPINGS = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")


@pytest.fixture
def mappings(monkeypatch) -> dict[str, dict]:
    """PEFT's three registries, copied for the test: what a test registers is gone after it."""
    copies = {name: dict(getattr(peft.mapping, name)) for name in MAPPINGS}
    for name, copy in copies.items():
        monkeypatch.setattr(peft.mapping, name, copy)
    return copies


# ----------------------------------------------------------------------------------------------- the enum
@pytest.mark.parametrize("member", [PeftType.LORA, *OutOfTreePeftType], ids=lambda m: m.value)
def test_members_behave_like_peft_types(member):
    """What PEFT and transformers do with a peft_type: read .value / .name, compare with and look up by the plain
    string, write it to JSON; PEFT's own LORA is the control."""
    assert isinstance(member, str)
    assert member.value == member.name == str.__str__(member)
    assert member == member.value and member.value == member
    assert {member.value: 1}[member] == 1 and {member: 1}[member.value] == 1
    assert json.dumps(member) == f'"{member.value}"'
    assert json.dumps({"peft_type": member}) == json.dumps({"peft_type": member.value})


def test_out_of_tree_members_format_as_the_plain_string():
    assert [str(m) for m in OutOfTreePeftType] == ["SMOA", "MELORA", "MORA", "SSMLORA"]
    assert f"{OutOfTreePeftType.SMOA}" == "SMOA"


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (lambda: smoa.SMoAConfig(target_modules=["q_proj"]), "SMOA"),
        (lambda: smoa.baselines.MeLoRAConfig(r=[1, 1], target_modules=["q_proj"]), "MELORA"),
        (lambda: smoa.baselines.MoRAConfig(target_modules=["q_proj"]), "MORA"),
        (lambda: smoa.baselines.SSMLoRAConfig(target_modules=["q_proj"]), "SSMLORA"),
    ],
    ids=["smoa", "melora", "mora", "ssmlora"],
)
def test_each_method_is_registered_and_saves_its_plain_name(config, name, tmp_path):
    made = config()
    assert made.peft_type is OutOfTreePeftType[name] and made.peft_type == name
    for mapping in MAPPINGS:
        assert name in getattr(peft.mapping, mapping)
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[name] is type(made)
    made.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == name
    loaded = peft.PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(made) and loaded.peft_type == name


# ------------------------------------------------------------------------------------------- registration
def test_registering_the_same_method_again_changes_nothing(mappings):
    before = {name: dict(mapping) for name, mapping in mappings.items()}
    register_peft_tuner("SMOA", smoa.SMoAConfig, smoa.SMoAModel, smoa.SMoAModel.prefix)
    register_peft_tuner("SMOA", smoa.SMoAConfig, smoa.SMoAModel, smoa.SMoAModel.prefix)
    assert mappings == before


def test_a_new_method_lands_in_all_three_mappings(mappings):
    class ToyConfig(peft.PeftConfig):
        pass

    register_peft_tuner("TOY", ToyConfig, smoa.SMoAModel, "toy_")
    assert mappings["PEFT_TYPE_TO_CONFIG_MAPPING"]["TOY"] is ToyConfig
    assert mappings["PEFT_TYPE_TO_TUNER_MAPPING"]["TOY"] is smoa.SMoAModel
    assert mappings["PEFT_TYPE_TO_PREFIX_MAPPING"]["TOY"] == "toy_"


def test_another_class_under_a_taken_name_is_refused(mappings):
    class OtherConfig(peft.PeftConfig):
        pass

    before = {name: dict(mapping) for name, mapping in mappings.items()}
    with pytest.raises(ValueError, match=r"'SMOA' is already registered with config SMoAConfig"):
        register_peft_tuner("SMOA", OtherConfig, smoa.SMoAModel, "other_")
    with pytest.raises(ValueError, match=r"'LORA' is already registered with config LoraConfig"):
        register_peft_tuner("LORA", OtherConfig, smoa.SMoAModel, "other_")
    assert mappings == before


def test_lower_case_names_are_refused(mappings):
    with pytest.raises(ValueError, match=r"upper case; got 'toy', use 'TOY'"):
        register_peft_tuner("toy", smoa.SMoAConfig, smoa.SMoAModel, "toy_")
    assert "toy" not in mappings["PEFT_TYPE_TO_CONFIG_MAPPING"]
    assert "TOY" not in mappings["PEFT_TYPE_TO_CONFIG_MAPPING"]


# ------------------------------------------------------------------------------------------ version check
def test_installed_and_boundary_versions_pass():
    low, high = SUPPORTED_PEFT
    assert low <= Version(peft.__version__) < high
    check_peft_version()
    check_peft_version(peft.__version__)
    check_peft_version(str(low))
    check_peft_version(f"{low.major}.{low.minor}.99")


@pytest.mark.parametrize("version", ["0.20.9", str(SUPPORTED_PEFT[1]), "1.0.0"])
def test_a_version_outside_the_range_raises_one_line_naming_the_install_command(version):
    low, high = SUPPORTED_PEFT
    with pytest.raises(ImportError) as info:
        check_peft_version(version)
    message = str(info.value)
    assert "\n" not in message
    assert f"installed: peft {version}" in message
    assert message.endswith(f"python3 -m pip install 'peft>={low},<{high}'")


def test_registration_checks_the_version(mappings, monkeypatch):
    # the installed version is the check's default argument, read when smoa was imported
    monkeypatch.setattr(check_peft_version, "__defaults__", ("0.20.0",))
    with pytest.raises(ImportError, match=r"installed: peft 0\.20\.0"):
        register_peft_tuner("TOY", smoa.SMoAConfig, smoa.SMoAModel, "toy_")
    assert "TOY" not in mappings["PEFT_TYPE_TO_CONFIG_MAPPING"]


# ------------------------------------------------------------------------------------------------- tags
def test_tags_are_added_once_and_kept():
    model = tiny_llama()
    model.add_model_tags(["mine"])
    tag_base_model(model, ["smoa"])
    tag_base_model(model, ["smoa", "extra"])
    assert model.model_tags == ["mine", "smoa", "extra"]


def test_tagging_a_model_without_tags_does_nothing():
    class Plain:
        pass

    plain = Plain()
    tag_base_model(plain, ["smoa"])
    assert vars(plain) == {}


def test_an_smoa_model_carries_the_smoa_tag():
    model = peft.get_peft_model(tiny_llama(), smoa.SMoAConfig(r=2, num_blocks=2, target_modules=["q_proj"]))
    assert "smoa" in model.base_model.model.model_tags
