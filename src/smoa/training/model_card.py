"""The adapter folder a run writes: PEFT's files, the default base named by its public id, and a model card that
says how to load the adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from smoa._io import write_text_atomic

if TYPE_CHECKING:
    import torch


def save_adapter(model, folder: str | os.PathLike[str], state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``model.save_pretrained(folder)``, naming the default base model by its public id (not a cache folder), with
    a model card that says how to load the adapter. ``state_dict``: the gathered state where the engine shards the
    parameters (:func:`.engines.gathered_trainable_state`)."""
    from smoa.models import DEFAULT_MODEL_ID, record_public_base

    model.save_pretrained(folder, state_dict=state_dict)
    base = json.loads((Path(folder) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if record_public_base(folder) or base == DEFAULT_MODEL_ID:
        loading = (
            "from smoa.models import load_model_and_tokenizer\n\n"
            "# the packaged SmolLM2 copy it was trained on (the adapter checks its base weights' fingerprint)\n"
            'base, tokenizer = load_model_and_tokenizer("default")'
        )
    else:
        loading = (
            f'from transformers import AutoModelForCausalLM\n\nbase = AutoModelForCausalLM.from_pretrained("{base}")'
        )
    add_usage_section(folder, loading)


USAGE_HEADING = "## Loading this adapter"


def add_usage_section(adapter_dir, base_loading: str) -> None:
    """Append to the adapter's model card (``README.md``, written by PEFT) how to load it: ``import smoa`` first
    (PEFT cannot read the method otherwise), then ``base_loading`` (Python lines that set ``base``), then
    ``PeftModel.from_pretrained``. Nothing is added twice; the card is rewritten atomically."""
    card = Path(adapter_dir) / "README.md"
    text = card.read_text() if card.is_file() else ""
    if USAGE_HEADING in text:
        return
    section = (
        f"\n{USAGE_HEADING}\n\n"
        "This adapter was trained with smoa (the Python package); `import smoa` registers its method with PEFT, "
        "without it PEFT cannot read `adapter_config.json`.\n\n"
        "```python\nimport smoa  # registers the method with PEFT\nfrom peft import PeftModel\n\n"
        f'{base_loading.strip()}\nmodel = PeftModel.from_pretrained(base, "path/to/this/folder")\n```\n'
    )
    write_text_atomic(card, text.rstrip("\n") + "\n" + section)
