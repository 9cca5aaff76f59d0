"""Export an adapter as a merged, full-precision transformers checkpoint that loads and serves without smoa.

The folder holds ``model.safetensors`` (``W ← W0 + ΔW`` for every adapted layer, no adapter modules left),
``config.json``, ``generation_config.json``, the tokenizer files and a model card (``README.md``) naming the base,
the method and, when the adapter sits in a ``smoa train`` run folder, the training recipe. Serving engines that take
merged checkpoints (vLLM, TGI, llama.cpp's GGUF converter) read it as they read the base model.

An adapter trained on a bitsandbytes base (``quantized=``) is merged onto a full-precision copy of that base with
:func:`smoa.adapter.merge_into_full_precision`: each ``ΔW`` is anchored on the dequantised ``W0`` it was trained
against, then added to the float weights. Prompt-learning adapters (prompt tuning, P-tuning, prefix tuning) have no
weight update to merge and are refused.

The folder is written next to its destination under a temporary name and renamed into place at the end, so an
interrupted export leaves no half-written checkpoint; an existing, non-empty destination is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

QUANTIZATIONS = ("nf4", "fp4", "nf4-double", "int8")


class ExportError(ValueError):
    """An adapter that cannot be exported, or a destination that cannot be written; the message says why."""


def adapter_folder(path: str | os.PathLike[str]) -> Path:
    """The adapter folder of ``path``: the folder itself, or ``<run folder>/adapter``."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    raise ExportError(f"{path}: no adapter_config.json here or in {path / 'adapter'}; give an adapter folder")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "adapter_config.json").read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{folder / 'adapter_config.json'}: not JSON ({error})") from None


def _recipe(folder: Path) -> dict[str, Any] | None:
    """The recipe of the ``smoa train`` run that wrote ``folder`` (``<run>/run.json``), if there is one."""
    run_file = folder.parent / "run.json"
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text()).get("recipe")
    except (json.JSONDecodeError, AttributeError):
        return None


def _bnb_config(quantized: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quantized == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if quantized == "fp4" else "nf4",
        bnb_4bit_use_double_quant=quantized == "nf4-double",
        bnb_4bit_compute_dtype=torch.float32,
    )


def merged_model(adapter: Path, base: str, dtype: str = "float32", quantized: str | None = None):
    """``(merged model, tokenizer, adapter config)``: the base with the adapter's update merged into its weights."""
    from smoa.methods import load_adapter
    from smoa.models import load_model, load_tokenizer, resolve_model_path

    config = _read_config(adapter)
    peft_type = str(config.get("peft_type", "?"))
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise ExportError(
            f"{adapter}: a {peft_type.lower()} adapter adds virtual tokens, not a weight update, so there is nothing "
            "to merge; serve it with PEFT (PeftModel.from_pretrained) instead"
        )
    tokenizer = load_tokenizer(base)
    full = load_model(base, dtype, device="cpu")
    if quantized is None:
        model = load_adapter(full, adapter)
        try:
            merged = model.merge_and_unload()
        except (AttributeError, NotImplementedError, ValueError) as error:
            raise ExportError(f"{adapter}: the {peft_type} adapter cannot be merged ({error})") from None
        return merged, tokenizer, config
    if quantized not in QUANTIZATIONS:
        raise ExportError(f"--quantized-base {quantized!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if peft_type != "SMOA":
        raise ExportError(f"--quantized-base merges SMoA adapters; {adapter} holds a {peft_type} adapter")
    from transformers import AutoModelForCausalLM

    from smoa.adapter import merge_into_full_precision

    quantised_base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(base), quantization_config=_bnb_config(quantized), local_files_only=True
    )
    adapted = load_adapter(quantised_base, adapter)
    return merge_into_full_precision(adapted, full), tokenizer, config


def model_card(base: str, config: dict[str, Any], recipe: dict[str, Any] | None, quantized: str | None) -> str:
    """The exported folder's ``README.md``: base, method, adapter settings and the training recipe."""
    settings = {k: config[k] for k in ("r", "num_blocks", "lora_alpha", "target_modules", "layers_to_transform")
                if config.get(k) is not None}  # fmt: skip
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        "tags: [smoa, peft, merged]",
        "---",
        "",
        f"# {config.get('peft_type', 'adapter')} adapter merged into {base}",
        "",
        f"A full-precision checkpoint: the base model `{base}` with the {config.get('peft_type')} adapter's weight "
        "update merged into its weights (`W = W0 + ΔW`). It loads with plain transformers "
        "(`AutoModelForCausalLM.from_pretrained(folder)`) and needs no adapter library.",
        "",
        f"- method: {config.get('peft_type')}",
        f"- adapter settings: `{json.dumps(settings, sort_keys=True)}`",
    ]
    if quantized:
        lines.append(f"- trained on a bitsandbytes {quantized} base; the update was computed on the dequantised base "
                     "weights and added to the full-precision ones")  # fmt: skip
    if recipe:
        lines += ["", "## Training recipe", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def export_merged(
    adapter: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    base: str | None = None,
    dtype: str = "float32",
    quantized: str | None = None,
) -> Path:
    """Write the merged checkpoint of ``adapter`` to ``output`` (see the module docstring); returns ``output``.

    ``base`` defaults to the adapter's ``base_model_name_or_path`` (found offline: the packaged default model, a
    folder, or the local Hugging Face cache).
    """
    folder = adapter_folder(adapter)
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"--output {output} exists and is not an empty folder; choose a new folder")
    config = _read_config(folder)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{folder / 'adapter_config.json'} names no base model; give --model")
    model, tokenizer, config = merged_model(folder, base, dtype, quantized)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        from smoa.models import DEFAULT_MODEL, DEFAULT_MODEL_ID

        shown = DEFAULT_MODEL_ID if base in (DEFAULT_MODEL, DEFAULT_MODEL_ID) else base
        (staging / "README.md").write_text(model_card(shown, config, _recipe(folder), quantized))
        if output.exists():
            output.rmdir()  # empty (checked above)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
