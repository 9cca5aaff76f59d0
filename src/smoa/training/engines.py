"""Scale-out engines of a run: plain data parallel (the launcher alone), DeepSpeed ZeRO-2 / ZeRO-3, torch FSDP2.

The engine decides how the work is spread over processes, never what is computed: with the same global batch the
adapter equals the one-process run's up to summation order (tests/training/test_distributed.py). Launch every engine
with ``torchrun --nproc_per_node N -m smoa.cli.main train ...`` (docs/scale-out.md).

* ZeRO-3 partitions the base weights when the model loads (transformers' ``HfDeepSpeedConfig``); injection gathers
  one layer's ``W0`` at a time for its SVD (``peft.utils.integrations.gather_params_ctx`` in the SMoA layer).
* Under ZeRO-3 and FSDP2 each process holds a shard of every parameter: the adapter is gathered (its parameters
  only, never the base) before it is written, by every process together.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from .recipe import Recipe, RecipeError

#: transformers' default FSDP settings as this project uses them: FSDP2, one unit per decoder layer, checkpoints
#: that hold the adapter whole (``adapter_model.safetensors``) beside the sharded optimizer state
FSDP_DEFAULTS: dict[str, Any] = {
    "version": 2,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "state_dict_type": "SHARDED_STATE_DICT",
    "reshard_after_forward": True,
    "cpu_ram_efficient_loading": False,
}
ENGINE_FILE = "engine.json"


def read_deepspeed_config(path: str) -> dict[str, Any]:
    """The DeepSpeed JSON named by the recipe key ``deepspeed``, checked for what a run needs.

    Raises:
        RecipeError: the file is missing or not a JSON mapping, DeepSpeed is not installed, or the ZeRO stage is not
            0-3.
    """
    key = f"recipe key deepspeed={path!r}"
    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError(f"{key} needs DeepSpeed, which is not installed: python3 -m pip install -e '.[deepspeed]'")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise RecipeError(
            f"{key}: the file does not exist; use configs/deepspeed/zero2.json or zero3.json, or your own JSON"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{key}: the file is not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{key}: the file must hold a JSON object, not {type(config).__name__}")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise RecipeError(f"{key}: zero_optimization.stage={stage!r} must be 0, 1, 2 or 3")
    return config


def engine_name(recipe: Recipe) -> str:
    """``"zero2"`` / ``"zero3"`` (DeepSpeed ZeRO stage), ``"fsdp2"``, or ``"ddp"`` (one process or plain data
    parallel: the same checkpoint format)."""
    if recipe.deepspeed is not None:
        return f"zero{read_deepspeed_config(recipe.deepspeed).get('zero_optimization', {}).get('stage', 0)}"
    return "fsdp2" if recipe.fsdp else "ddp"


def engine_arguments(recipe: Recipe) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords of the recipe's engine (none for plain data parallel)."""
    if recipe.deepspeed is not None:
        config = read_deepspeed_config(recipe.deepspeed)
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        if "LOCAL_RANK" not in os.environ:  # no launcher: one process, as `torchrun --nproc_per_node 1` would set it
            os.environ.update(
                RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=os.environ.get("MASTER_PORT") or _free_port(),
            )  # fmt: skip
        return {"deepspeed": config}
    if recipe.fsdp:
        return {"fsdp": True, "fsdp_config": {**FSDP_DEFAULTS, **recipe.fsdp_config}}
    return {}


def connect_engine(recipe: Recipe) -> None:
    """Hand DeepSpeed the process group the Trainer's arguments have set up (on a GPU accelerate does it; on a CPU
    it does not, and ZeRO-3's partitioned loading would count one process)."""
    if recipe.deepspeed is None:
        return
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if torch.distributed.is_initialized():
        deepspeed.init_distributed(get_accelerator().communication_backend_name(), auto_mpi_discovery=False)


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def check_engine_of_checkpoint(checkpoint: str | os.PathLike[str], recipe: Recipe, world_size: int) -> None:
    """Refuse to resume ``checkpoint`` under another engine or process count than the one that wrote it: their
    optimizer states are stored differently (DeepSpeed and FSDP shard them per process), and the Trainer would
    silently restart the optimizer instead.

    Raises:
        RecipeError: naming both engines and how to resume.
    """
    path = Path(checkpoint) / ENGINE_FILE
    if not path.is_file():
        saved = {"engine": "ddp", "world_size": world_size}  # written before engines were recorded: plain
    else:
        saved = json.loads(path.read_text())
    now = {"engine": engine_name(recipe), "world_size": world_size}
    portable = saved["engine"] == now["engine"] == "ddp"  # a full optimizer state, whatever the process count
    if saved != now and not portable:
        raise RecipeError(
            f"checkpoint {checkpoint} was written by {describe(saved)}; resume it with the same engine and process "
            f"count (this run: {describe(now)}), or start a new run from its adapter"
        )


def describe(engine: dict[str, Any]) -> str:
    names = {"ddp": "plain data parallel", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3", "fsdp2": "FSDP2"}
    name = names.get(engine["engine"], engine["engine"])
    return f"{name} on {engine['world_size']} process{'es' if engine['world_size'] > 1 else ''}"


def write_engine_record(checkpoint: str | os.PathLike[str], recipe: Recipe, world_size: int) -> None:
    from .checkpoints import write_json_atomic

    write_json_atomic(Path(checkpoint) / ENGINE_FILE, {"engine": engine_name(recipe), "world_size": world_size})


def _is_zero3_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def gathered_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full tensor on the CPU}`` for every trainable parameter and every buffer of ``model`` (a PEFT model
    as the Trainer holds it), whatever the engine shards: call it on every process together.

    Under ZeRO-3 the trainable parameters are gathered with ``deepspeed.zero.GatheredParameters``; under FSDP2 each
    is a ``DTensor`` made whole with ``full_tensor()``. The frozen base is never gathered. Writing a ``DTensor``
    itself fails in safetensors ("Attempted to access the data pointer on an invalid python storage": a DTensor has
    no storage of its own), which is why ``save_pretrained`` needs this state under FSDP2."""
    from torch.distributed.tensor import DTensor

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    zero3 = [p for _, p in trainable if _is_zero3_param(p)]
    gather = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(zero3, modifier_rank=None)
    state = {}
    with gather:
        for name, param in trainable:
            tensor = param.full_tensor() if isinstance(param, DTensor) else param
            state[name] = tensor.detach().to("cpu", copy=True)
    for name, buffer in model.named_buffers():
        tensor = buffer.full_tensor() if isinstance(buffer, DTensor) else buffer
        state[name] = tensor.detach().to("cpu", copy=True)
    return state


def share_main_process_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Every process takes the main process's buffers (SMoA's block orders and base fingerprints among them), as
    DDP does at start: each process computed its own orders by SVD at injection, and an SVD on other hardware or
    with another thread count can order near-ties differently. DeepSpeed and FSDP2 do not synchronise buffers."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    for buffer in model.buffers():
        shared = buffer.detach().to(device)
        torch.distributed.broadcast(shared, src=0)
        buffer.copy_(shared)


def with_whole_base_count(plan, model: torch.nn.Module):
    """``plan`` (a :class:`smoa.methods.MethodPlan`) with the base's parameters counted whole: a ZeRO-3 partitioned
    parameter holds no elements in this process (its whole size is ``ds_numel``), so the base would count 0."""
    import dataclasses

    if not any(_is_zero3_param(p) for p in model.parameters()):
        return plan
    base = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if not p.requires_grad)
    return dataclasses.replace(plan, base_params=base)


def is_main_process() -> bool:
    """Whether this is the process that writes results (rank 0 of a ``torchrun`` launch, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def enable_fsdp_on_cpu(accelerator, plugin) -> None:
    """accelerate turns FSDP on for GPU backends only and trains a CPU run as plain data parallel, silently; make it
    shard as asked (FSDP2 works with gloo: the CPU tests run this way)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU and plugin is not None:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin


def load_for_evaluation(recipe: Recipe, adapter_dir: str | os.PathLike[str]):
    """The recipe's base model, whole and in this process only, with the saved adapter loaded: what the main
    process evaluates after a run whose engine sharded the parameters (a sharded model computes only with every
    process taking part)."""
    from peft import PeftModel

    import smoa  # noqa: F401  (registers SMoA and the baselines with PEFT)
    from smoa.models import load_model_and_tokenizer

    with _no_zero3_loading():
        base, _ = load_model_and_tokenizer(recipe.model, dtype=recipe.dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).to(
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )


@contextlib.contextmanager
def _no_zero3_loading():
    """Load a model whole although a ZeRO-3 configuration is active (transformers would partition it)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
