"""``smoa export``: a merged checkpoint that loads with plain transformers (smoa not importable) and gives the
adapted model's logits; what cannot be exported is refused."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

import smoa
from smoa.cli.main import main
from smoa.export import ExportError, export_merged
from tests import tiny

TOKENS = torch.randint(3, 300, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = tiny.build_tiny_tokenizer(vocab_size=320)
    tiny.build_tiny_llama(len(tokenizer), hidden_size=64, intermediate_size=128).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _smoa_adapter(base_dir, folder, **config):
    torch.manual_seed(1)
    settings = dict(r=4, num_blocks=2, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), smoa.SMoAConfig(**{**settings, **config}))
    model.save_pretrained(folder)
    return model.eval()


def _logits_without_smoa(folder, out):
    """Load ``folder`` in a fresh interpreter where importing smoa (or peft) fails, save its logits to ``out``."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["smoa"] = None; sys.modules["peft"] = None  # any import of them raises ImportError
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()
        AutoTokenizer.from_pretrained({str(folder)!r})
        with torch.no_grad():
            torch.save(model(torch.tensor({TOKENS.tolist()})).logits, {str(out)!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def test_export_loads_without_smoa_and_gives_the_adapted_logits(base_dir, tmp_path):
    adapted = _smoa_adapter(base_dir, tmp_path / "adapter")
    with torch.no_grad():
        expected = adapted(TOKENS).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir)(TOKENS).logits
    assert (expected - plain).abs().max() > 1e-3  # the adapter changes the model
    assert main(["export", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    assert not [name for name in files if "adapter" in name]
    card = (tmp_path / "merged" / "README.md").read_text()
    assert f"base_model: {base_dir}" in card and "SMOA" in card
    assert "SMoA" not in json.loads((tmp_path / "merged" / "config.json").read_text()).get("architectures", [""])[0]
    logits = _logits_without_smoa(tmp_path / "merged", tmp_path / "logits.pt")
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_export_reads_a_run_folder_and_names_its_recipe(base_dir, tmp_path):
    _smoa_adapter(base_dir, tmp_path / "run" / "adapter")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"recipe": {"method": "smoa", "learning_rate": 0.001}}))
    export_merged(tmp_path / "run", tmp_path / "merged")
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "## Training recipe" in card and '"learning_rate": 0.001' in card


def test_export_refuses_what_it_cannot_write_or_merge(base_dir, tmp_path, capsys):
    _smoa_adapter(base_dir, tmp_path / "adapter")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", str(tmp_path / "adapter"), "--output", str(tmp_path / "taken")]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"  # nothing of the user's is touched
    with pytest.raises(ExportError, match=r"no adapter_config\.json"):
        export_merged(tmp_path / "taken", tmp_path / "out")
    prompt = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    prompt.save_pretrained(tmp_path / "prompt")
    with pytest.raises(ExportError, match="nothing to merge"):
        export_merged(tmp_path / "prompt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_export_from_a_4bit_base_adds_the_update_computed_there(base_dir, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[quantized]')")
    from transformers import BitsAndBytesConfig

    from smoa.methods import load_adapter

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    torch.manual_seed(1)
    quantised = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization)
    config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(quantised, config).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="different base"):  # onto the float base unasked: the fingerprint refuses it
        export_merged(tmp_path / "adapter", tmp_path / "wrong", base=str(base_dir))
    export_merged(tmp_path / "adapter", tmp_path / "merged", base=str(base_dir), quantized="nf4")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    float_base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    adapted = load_adapter(AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization),
                           tmp_path / "adapter")  # fmt: skip
    layers = [module for module in adapted.modules() if isinstance(module, smoa.SMoALayer)]
    assert layers
    for layer in layers:
        key = f"{layer.module_name}.weight"
        torch.testing.assert_close(
            exported[key] - float_base[key], layer.get_delta_weight("default"), rtol=0, atol=1e-6
        )
    untouched = [k for k in exported if "q_proj" not in k and "v_proj" not in k]
    assert all(torch.equal(exported[k], float_base[k]) for k in untouched)
