"""One training run: recipe → model + method → data → transformers' Trainer → adapter, metrics and evaluation.

Distributed runs need nothing special: launch the same command with ``accelerate launch`` (DDP, FSDP or DeepSpeed;
configs in ``configs/accelerate/``) and Trainer shards the data and averages the gradients.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoa._memory import peak_memory_mib, peak_memory_reset
from smoa._progress import progress_bars, progress_enabled

from .checkpoints import (
    CheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    recover_staging,
    save_dir_atomic,
    verify_checkpoint,
    write_json_atomic,
    write_manifest,
)
from .data import (
    dataset_label,
    load_custom_records,
    load_training_records,
    tokenize_records,
    training_template,
)
from .engines import (
    check_engine_of_checkpoint,
    connect_engine,
    enable_fsdp_on_cpu,
    engine_arguments,
    gathered_trainable_state,
    load_for_evaluation,
    share_main_process_buffers,
    with_whole_base_count,
    write_engine_record,
)
from .model_card import save_adapter
from .preflight import check_evaluation_settings, check_loss_tokens, method_settings_error
from .recipe import Recipe, RecipeError

RUN_FILE = "run.json"


class RunDirError(RuntimeError):
    """The output folder holds another run, or another process is using it."""


class DiskFullError(RuntimeError):
    """The disk holding the run folder filled up while the run was writing to it."""


def _disk_full(error: BaseException, run_dir: Path) -> bool:
    """Whether ``error`` is a write that failed for lack of space (``ENOSPC``, or torch's C++ stream error on a disk
    with no space left)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(error) or "os error 28" in str(error):  # safetensors' Rust writer
        return True
    if isinstance(error, RuntimeError) and ("iostream" in str(error) or "write" in str(error).lower()):
        try:
            return shutil.disk_usage(run_dir).free < 16 * 2**20
        except OSError:
            return False
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and _disk_full(cause, run_dir)


@contextlib.contextmanager
def naming_a_full_disk(run_dir: Path):
    """Turn whatever a writer raises for a full disk into one :class:`DiskFullError` that says so, where, and
    which checkpoint is intact."""
    try:
        yield
    except Exception as error:  # writers differ in what they raise for a full disk
        if not _disk_full(error, run_dir):
            raise
        intact = latest_valid_checkpoint(run_dir, warn=lambda *a: None)
        raise DiskFullError(
            f"the disk holding {run_dir} is full ({shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free): a file "
            f"could not be written ({type(error).__name__}: {str(error)[:80]}). "
            + (f"{intact.name} is intact; " if intact else "")
            + "free some space, then continue with --resume"
        ) from error


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient: the run diverged."""

    def __init__(self, step: int, what: str, run_dir: str | os.PathLike[str], learning_rate: float) -> None:
        kept = list_checkpoints(run_dir)
        newest = f"; checkpoints before it are intact (newest {kept[-1].name})" if kept else ""
        super().__init__(
            f"training diverged at step {step}: {what} is not finite (learning_rate={learning_rate:g}){newest}; "
            "no adapter was written. Lower learning_rate (or warm up longer) and start again"
        )
        self.step = step


@dataclass
class TrainResult:
    """What a run produced, for tables and the run folder's ``results.json``."""

    run_dir: str
    adapter_dir: str
    method: str
    settings: dict[str, Any]
    trainable_params: int
    params_percent: float
    train_examples: int
    steps: int
    train_seconds: float
    peak_memory_mib: float | None
    best_checkpoint: str | None
    final_train_loss: float | None
    best_val_loss: float | None
    update_rank: float | None = None
    learning_rate: float | None = None
    tokens_seen: int | None = None  # non-padding input tokens processed in training
    val_loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    evaluation: dict[str, Any] = field(default_factory=dict)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


# ---------------------------------------------------------------------------------------------------- model
def build_model(recipe: Recipe):
    """``(peft_model, tokenizer, plan)``: the base model with the recipe's method injected."""
    from peft import get_peft_model

    import smoa  # noqa: F401  (registers SMoA and the baselines with PEFT)
    from smoa.methods import plan_method
    from smoa.models import load_model_and_tokenizer

    torch.manual_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(recipe.model, dtype=recipe.dtype)
    plan = plan_method(
        recipe.method, model, recipe.budget, recipe.target_params, recipe.target_modules, **recipe.method_args
    )
    try:
        config = plan.peft_config()
    except (TypeError, ValueError) as err:  # an unknown or out-of-range method setting
        raise method_settings_error(recipe, err) from None
    config.task_type = "CAUSAL_LM"
    torch.manual_seed(recipe.seed)
    try:
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated alias; nothing for a user to change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
            with progress_bars(recipe.progress):
                peft_model = get_peft_model(model, config)
    except (TypeError, ValueError) as err:  # a base layer or a setting the method cannot take (named in err)
        raise RecipeError(f"method {recipe.method!r} cannot be applied to model {recipe.model!r}: {err}") from None
    if recipe.gradient_checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model, tokenizer, plan


# ------------------------------------------------------------------------------------------------ run folder
LOCK_FILE = ".smoa.lock"
_LOCKS: dict[str, int] = {}  # run folder → the open, flock-ed lock file of this process


def lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's exclusive lock (``flock`` on ``.smoa.lock``, which records the holder's pid).

    The kernel drops the lock when its process dies, so a lock left by a killed run never blocks the next one.

    Raises:
        RunDirError: another live process holds it (named by its pid).
    """
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(
            f"run folder {run_dir} is in use by process {holder}; wait for it to finish, or stop it and resume"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[key] = fd


def unlock_run_dir(run_dir: Path) -> None:
    fd = _LOCKS.pop(str(run_dir.resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def prepare_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> Path:
    """Create or check the run folder and take its lock: never mix two runs (or two processes) in one folder,
    never delete one silently."""
    run_dir = Path(recipe.run_dir)
    run_file = run_dir / RUN_FILE
    if int(os.environ.get("RANK", "0")) != 0:
        return run_dir  # in a distributed launch the main process checks and creates the folder
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"recipe key output_dir: {run_dir} is a file, not a folder; choose a folder for the run")
    existed = run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
    try:
        lock_run_dir(run_dir)
    except OSError as error:
        raise RunDirError(
            f"recipe key output_dir: cannot create the run folder {run_dir} ({error.strerror}); choose a folder "
            "you can write to"
        ) from None
    try:
        _check_run_dir(recipe, run_dir, run_file, existed, resume, overwrite)
    except BaseException:
        unlock_run_dir(run_dir)
        raise
    return run_dir


def data_digest(recipe: Recipe) -> str | None:
    """SHA-256 of the training data the recipe names (``train_file``: a file's bytes, or a folder's files, each by
    relative path and bytes); None for the packaged data, which is versioned with its package. A run records it, so
    data edited between a run and its ``--resume`` is caught: the recipe's fingerprint hashes the path only."""
    if not recipe.train_file:
        return None
    path = Path(recipe.train_file).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return None  # missing data is named where it is read
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def check_finished_run(recipe: Recipe, run_dir: Path) -> None:
    """A finished run folder may stand for ``recipe`` only if its ``run.json`` records this recipe's fingerprint and
    training data; :class:`RunDirError` names the differing settings or the changed data otherwise."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise RunDirError(f"{run_dir} holds results.json but no {RUN_FILE}; it is not a smoa run: move it away")
    saved = json.loads(run_file.read_text())
    if saved.get("fingerprint") != recipe.fingerprint():
        keys = ", ".join(f"{k} {b!r} → {n!r}" for k, (b, n) in recipe.differences(saved.get("recipe", {})).items())
        raise RunDirError(
            f"{run_dir} holds a finished run with other settings ({keys or 'other settings'}); restore the study "
            "file, or move the run folder away so it is trained again"
        )
    data = data_digest(recipe)
    if saved.get("data_sha256") not in (None, data):
        raise RunDirError(
            f"{run_dir} holds a finished run trained on other data (train_file {recipe.train_file} has changed); "
            "restore the file, or move the run folder away so it is trained again"
        )


def _run_record(recipe: Recipe, data: str | None, **extra: Any) -> dict[str, Any]:
    record = {"fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict(), **extra}
    return record if data is None else {**record, "data_sha256": data}


def _check_run_dir(recipe: Recipe, run_dir: Path, run_file: Path, existed: bool, resume: bool, overwrite: bool):
    data = data_digest(recipe)
    if existed:
        if overwrite:
            for child in run_dir.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif not run_file.is_file():
            raise RunDirError(
                f"output folder {run_dir} is not empty and holds no smoa run ({RUN_FILE}); choose another "
                "output_dir, or pass --overwrite to replace its contents"
            )
        else:
            saved = json.loads(run_file.read_text())
            untrained = not list_checkpoints(run_dir) and not (run_dir / "adapter").exists()
            if not untrained and saved.get("data_sha256") not in (None, data):
                raise RunDirError(
                    f"output folder {run_dir} holds a run trained on other data: train_file {recipe.train_file} has "
                    f"changed since (sha256 {saved['data_sha256'][:12]}… → {(data or 'none')[:12]}…); restore the "
                    "file, or choose another output_dir, or pass --overwrite to train afresh on the new data"
                )
            if saved.get("fingerprint") != recipe.fingerprint():
                differences = recipe.differences(saved.get("recipe", {}))
                if untrained:  # stopped before its first checkpoint (bad data, a model that did not load)
                    write_json_atomic(run_file, _run_record(recipe, data))
                elif longer_run(differences) and resume:
                    extend_run(recipe, run_dir, run_file, differences, saved, data)
                else:
                    keys = ", ".join(f"{k} {before!r} → {now!r}" for k, (before, now) in differences.items())
                    hint = " pass --resume to train it further;" if longer_run(differences) else ""
                    raise RunDirError(
                        f"output folder {run_dir} holds a different run ({keys or 'other settings'});{hint} choose "
                        "another output_dir, or pass --overwrite to replace it"
                    )
            elif not resume and not untrained:
                raise RunDirError(
                    f"output folder {run_dir} already holds this run; pass --resume to continue it or --overwrite "
                    "to start again"
                )
    if not run_file.is_file():
        write_json_atomic(run_file, _run_record(recipe, data))
    elif data is not None and "data_sha256" not in (record := json.loads(run_file.read_text())):
        write_json_atomic(run_file, {**record, "data_sha256": data})  # a run from before data was recorded
    recover_staging(run_dir / "adapter", warn=print)


def longer_run(differences: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the only difference from a saved run is more training: a larger ``max_steps`` (or, without a step
    limit, more ``epochs``)."""
    if set(differences) == {"max_steps"}:
        before, now = differences["max_steps"]
        return before != -1 and (now == -1 or now > before)
    if set(differences) == {"epochs"}:
        before, now = differences["epochs"]
        return now > before
    return False


def extend_run(
    recipe: Recipe, run_dir: Path, run_file: Path, differences, saved: dict[str, Any], data: str | None = None
) -> None:
    """Let ``--resume`` train a run further: its finished ``adapter/`` and ``results.json`` are kept beside it as
    ``adapter-step<N>`` / ``results-step<N>.json``, and ``run.json`` records the longer run."""
    [(key, (before, now))] = differences.items()
    kept = list_checkpoints(run_dir)
    if not kept:
        raise RunDirError(f"output folder {run_dir} holds no checkpoint to train further from; pass --overwrite")
    steps = checkpoint_step(kept[-1])
    for name, kept in (("adapter", f"adapter-step{steps}"), ("results.json", f"results-step{steps}.json")):
        if (run_dir / name).exists() and not (run_dir / kept).exists():
            os.replace(run_dir / name, run_dir / kept)
    history = [*saved.get("extended_from", []), {"step": steps, key: before}]
    write_json_atomic(run_file, _run_record(recipe, data, extended_from=history))
    print(
        f"extending {run_dir} from step {steps} ({key} {before} → {now}); the learning-rate schedule is recomputed "
        f"for the longer run; the adapter of the shorter run is kept in {run_dir / f'adapter-step{steps}'}"
    )


# --------------------------------------------------------------------------------------------------- training
def _trainer_classes():
    from transformers import Trainer, TrainerCallback

    class SMoATrainer(Trainer):
        """Trainer whose checkpoints carry a manifest written last (see :mod:`.checkpoints`), and whose loss applies
        the LM head only at labelled positions (:func:`smoa.lm_head.causal_lm_loss`: the same loss and gradients)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            for callback in self.callback_handler.callbacks:  # checked with the gradients, once per step
                if isinstance(callback, NonFiniteGuard):
                    callback.observe_loss(loss)
            return loss

        def _load_best_model(self):
            # the best checkpoint is read like any other: verified against its manifest first
            best = Path(self.state.best_model_checkpoint)
            if not best.is_dir():  # the run folder was moved: the checkpoint keeps its name inside it
                best = Path(self.args.output_dir) / best.name
                self.state.best_model_checkpoint = str(best)
            verify_checkpoint(best)
            super()._load_best_model()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from smoa.lm_head import causal_lm_loss, supports_selected_logits

            plain = (
                self.label_smoother is None
                and self.compute_loss_func is None
                and set(inputs) <= {"input_ids", "attention_mask", "labels"}
                and "labels" in inputs
                and self.accelerator.unwrap_model(model) is model  # DDP/FSDP/DeepSpeed: forward via the wrapper
                and not self.is_fsdp_enabled  # FSDP2 shards in place: only the root's forward gathers its weights
                and supports_selected_logits(model)
            )
            if not plain:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            with self.accelerator.autocast():  # the calls below bypass the forward accelerate wrapped in autocast
                loss = causal_lm_loss(model, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"], items)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and items is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss (one process here)
            return (loss, {"loss": loss}) if return_outputs else loss

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # DeepSpeed and FSDP write a part of the state from every process
            if self.args.should_save:
                checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                write_engine_record(checkpoint, self.smoa_recipe, self.args.world_size)
                write_manifest(checkpoint)

        def save_model(self, output_dir=None, _internal_call=False):
            if not self.shards_parameters:
                return super().save_model(output_dir, _internal_call)
            # every process holds a shard: gather the adapter (not the base) together, then the main process writes
            state = gathered_trainable_state(self.model)
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state)

        @property
        def shards_parameters(self) -> bool:
            return self.is_fsdp_enabled or (
                self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            )

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
                from accelerate.utils import FullyShardedDataParallelPlugin

                enable_fsdp_on_cpu(self.accelerator, FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args))
                self.is_fsdp_enabled = True

    class MetricsLog(TrainerCallback):
        """Appends every logged dict (loss, lr, eval_loss, ...) with the step to ``metrics.jsonl``."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with open(self.path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    class NonFiniteGuard(TrainerCallback):
        """Stops the run at the first non-finite training loss, gradient or validation loss, naming the step.

        One device → host read per optimizer step: the micro-batch losses are summed on the device as they come
        (:meth:`observe_loss`), and before the optimizer steps the largest absolute gradient entry of every trainable
        parameter (one fused ``torch._foreach_norm(·, inf)``, which propagates NaN and cannot overflow) is added to
        that sum; only when the result is not finite is the culprit looked up, parameter by parameter."""

        def __init__(self) -> None:
            self.loss: torch.Tensor | None = None

        def observe_loss(self, loss: torch.Tensor) -> None:
            """Add a micro-batch's loss to the step's sum (on its device; no synchronisation)."""
            loss = loss.detach().float().sum()
            self.loss = loss if self.loss is None else self.loss + loss.to(self.loss.device)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
            total = self.loss if self.loss is not None else torch.zeros(())
            if named:
                peaks = torch._foreach_norm([grad for _, grad in named], math.inf)
                total = total.to(peaks[0].device) + torch.stack([peak.float() for peak in peaks]).max()
            if not bool(torch.isfinite(total)):  # the step's one synchronisation
                self.diagnose(state, args, named)
            self.loss = None

        def diagnose(self, state, args, named) -> None:
            step = state.global_step + 1
            if self.loss is not None and not bool(torch.isfinite(self.loss)):
                raise NonFiniteError(step, f"the training loss ({self.loss.item()})", args.output_dir,
                                     args.learning_rate)  # fmt: skip
            for name, grad in named:
                if not bool(torch.isfinite(grad).all()):
                    raise NonFiniteError(step, f"the gradient of {name}", args.output_dir, args.learning_rate)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteError(
                    state.global_step, f"the validation loss ({loss})", args.output_dir, args.learning_rate
                )

    return SMoATrainer, MetricsLog, NonFiniteGuard


def training_arguments(recipe: Recipe, run_dir: Path):
    from transformers import TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if recipe.batch_size % (recipe.micro_batch_size * world):
        raise ValueError(
            f"recipe key batch_size={recipe.batch_size} must be a multiple of micro_batch_size × processes "
            f"= {recipe.micro_batch_size} × {world}"
        )
    if recipe.precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError("recipe key precision='fp16' needs a CUDA GPU (none here); use fp32, or bf16 on a CPU")
    report_to = ["tensorboard"] if recipe.tensorboard else []
    if recipe.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "recipe key tensorboard=true needs TensorBoard: python3 -m pip install tensorboard"
            ) from err
    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.micro_batch_size,
        per_device_eval_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.batch_size // (recipe.micro_batch_size * world),
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        activation_checkpointing=recipe.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        eval_strategy="steps",
        eval_steps=recipe.eval_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.keep_last + 1,  # the best checkpoint is kept on top of the last ones
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        prediction_loss_only=True,  # validation needs the loss only; gathering logits costs B·L·V floats per batch
        include_num_input_tokens_seen="non_padding",
        greater_is_better=False,
        logging_steps=recipe.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run), never averaged away
        report_to=report_to,
        disable_tqdm=not recipe.progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and world > 1 else None,
        ddp_find_unused_parameters=False if world > 1 else None,
        **engine_arguments(recipe),
    )
    connect_engine(recipe)
    return args


def run_training(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_from: str | None = None,
    callbacks: list | None = None,
    log=print,
) -> TrainResult:
    """Train ``recipe.method`` on ``recipe.task``; save the best adapter to ``<run_dir>/adapter``; evaluate.

    Args:
        resume: continue from the newest complete checkpoint of the run folder (checked against its manifest).
        overwrite: replace whatever the run folder holds.
        resume_from: a specific checkpoint folder to continue from (verified first).
        callbacks: extra ``transformers.TrainerCallback`` objects.
    """
    from smoa.methods import get_method

    get_method(recipe.method)  # an unknown name fails here, listing the known ones, before anything is loaded
    if recipe.method_learning_rates:  # the recipe's rate for this method, as `smoa compare` would use it
        if recipe.method in recipe.method_learning_rates:
            log(
                f"smoa: learning_rate {recipe.method_learning_rates[recipe.method]:g} for {recipe.method} "
                "(method_learning_rates)"
            )
        recipe = recipe.for_method(recipe.method)
    run_dir = prepare_run_dir(recipe, resume or resume_from is not None, overwrite)
    try:
        return _train_in(run_dir, recipe, resume, resume_from, callbacks, log)
    finally:
        unlock_run_dir(run_dir)


def _train_in(run_dir: Path, recipe: Recipe, resume: bool, resume_from, callbacks, log) -> TrainResult:
    from smoa.tasks.prompts import collate_for_training

    checkpoint = None
    if resume_from is not None:
        verify_checkpoint(resume_from)
        checkpoint = resume_from
    elif resume:
        found = latest_valid_checkpoint(run_dir, warn=log)
        checkpoint = str(found) if found else None
        if checkpoint is None:
            log(f"no complete checkpoint in {run_dir}; starting from the beginning")

    train_records, val_records = load_training_records(recipe)  # bad data fails here, before the model loads
    check_evaluation_settings(recipe, val_records)  # and so does an evaluation setting that would fail at the end
    args = training_arguments(recipe, run_dir)  # before the model: under ZeRO-3 the base is partitioned as it loads
    if checkpoint is not None:
        check_engine_of_checkpoint(checkpoint, recipe, args.world_size)
    model, tokenizer, plan = build_model(recipe)
    plan = with_whole_base_count(plan, model)  # ZeRO-3 partitioned the base: count its whole parameters
    share_main_process_buffers(model, args.device)
    template = training_template(recipe, train_records)
    if len(train_records) > 10_000:
        log(f"tokenising {len(train_records):,} training examples (template {template.name}) ...")
    train_set = ListDataset(tokenize_records(train_records, tokenizer, recipe, template))
    val_set = ListDataset(tokenize_records(val_records, tokenizer, recipe, template))
    check_loss_tokens(train_set, val_set, recipe, log)
    log(
        f"{recipe.method}: {plan.trainable_params:,} trainable parameters ({plan.params_percent:.4f}%), "
        f"{len(train_set):,} training / {len(val_set):,} validation examples"
    )
    SMoATrainer, MetricsLog, NonFiniteGuard = _trainer_classes()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = SMoATrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=lambda features: collate_for_training(features, pad),
        callbacks=[MetricsLog(run_dir / "metrics.jsonl"), NonFiniteGuard(), *(callbacks or [])],
    )
    trainer.smoa_recipe = recipe
    peak_memory_reset()
    started = time.perf_counter()
    total = total_steps(trainer)
    if checkpoint is not None and checkpoint_step(checkpoint) >= total:
        # the run had reached its last step (killed before the adapter was written, or resumed when finished):
        # training again would add steps past max_steps; finish from the checkpoints instead
        log(f"{checkpoint} is the run's last step ({total}); nothing left to train, finishing the run")
        finish_from_checkpoint(trainer, Path(checkpoint))
        output = None
    else:
        with naming_a_full_disk(run_dir):
            output = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - started
    peak = peak_memory_mib()
    adapter_dir = run_dir / "adapter"
    sharded = trainer.shards_parameters  # ZeRO-3 or FSDP2, from the recipe or from an accelerate config
    state = gathered_trainable_state(model) if sharded else None  # by every process together
    if trainer.args.should_save:
        with naming_a_full_disk(run_dir):
            save_dir_atomic(adapter_dir, lambda tmp: save_adapter(model, tmp, state))
        if sharded:  # each process holds a shard: the main process evaluates the saved adapter on a whole copy
            model = load_for_evaluation(recipe, adapter_dir)
    history = trainer.state.log_history
    val_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    result = TrainResult(
        run_dir=str(run_dir),
        adapter_dir=str(adapter_dir),
        method=recipe.method,
        settings=plan.settings,
        trainable_params=plan.trainable_params,
        params_percent=plan.params_percent,
        train_examples=len(train_set),
        steps=trainer.state.global_step,
        train_seconds=round(train_seconds, 2),
        peak_memory_mib=None if peak is None else round(peak, 1),
        best_checkpoint=trainer.state.best_model_checkpoint,
        final_train_loss=train_losses[-1] if train_losses else (output.training_loss if output else None),
        best_val_loss=min(val_losses) if val_losses else None,
        learning_rate=recipe.learning_rate,
        tokens_seen=int(trainer.state.num_input_tokens_seen) or None,
        val_loss_curve=[(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
    )
    if trainer.args.should_save:
        result.update_rank = mean_update_rank(model)
    if recipe.eval_tasks and trainer.args.should_save:
        result.evaluation = evaluate_model(model, tokenizer, recipe, val_records, run_dir)
    if trainer.args.should_save:
        write_json_atomic(run_dir / "results.json", result.__dict__)
    return result


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The optimizer step a Trainer checkpoint was written at (its ``trainer_state.json``)."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(path.read_text())["global_step"])
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint state {path} is unreadable ({err}); the checkpoint is corrupted") from err


def total_steps(trainer) -> int:
    """The optimizer steps the run makes in all: ``max_steps``, or epochs × update steps per epoch as the Trainer
    computes them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = len(trainer.get_train_dataloader())
    per_epoch = max(
        batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1
    )
    return math.ceil(args.num_train_epochs * per_epoch)


def finish_from_checkpoint(trainer, checkpoint: Path) -> None:
    """Take the state of a run that reached its last step from ``checkpoint`` and load its best adapter (both
    verified), as the end of :meth:`Trainer.train` would."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = Path(trainer.state.best_model_checkpoint or checkpoint)
    if not best.is_dir():
        best = Path(trainer.args.output_dir) / best.name
    verify_checkpoint(best)
    weights = best / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {best} holds no adapter_model.safetensors; it cannot be finished from")
    set_peft_model_state_dict(trainer.model, load_file(str(weights)))


def evaluate_model(
    model, tokenizer, recipe: Recipe, validation: list | None = None, run_dir: Path | None = None
) -> dict[str, Any]:
    """Evaluate on ``recipe.eval_tasks``; returns ``{task: result}`` as :func:`smoa.evaluation.runner.evaluate_task`.

    ``custom`` is your own held-out set: ``recipe.eval_file``, else ``validation`` (the run's validation split), scored
    by :func:`smoa.evaluation.custom.evaluate_own_data`; its generations go to ``<run_dir>/predictions-<name>.jsonl``.
    """
    from smoa.evaluation.runner import evaluate_task

    model.eval()
    out = {}
    for task in recipe.eval_tasks:
        if task == "custom":
            out[task] = evaluate_custom(model, tokenizer, recipe, validation or [], run_dir)
            continue
        out[task] = evaluate_task(
            model,
            tokenizer,
            task,
            limit=recipe.eval_limit,
            seed=recipe.seed if recipe.eval_seed is None else recipe.eval_seed,
            method=recipe.eval_method,
            template=recipe.template,
            num_beams=recipe.num_beams,
            batch_size=recipe.eval_batch_size,
            data_dir=recipe.eval_data_dir,
            progress=progress_enabled(recipe.progress),
        )
    return out


def evaluate_custom(model, tokenizer, recipe: Recipe, validation: list, run_dir: Path | None) -> dict[str, Any]:
    """Your own held-out set (see :func:`evaluate_model`), subsampled to ``eval_limit`` with ``eval_seed``."""
    from smoa.evaluation.custom import evaluate_own_data
    from smoa.evaluation.runner import subsample
    from smoa.tasks.records import write_jsonl

    if recipe.task != "custom":
        raise RecipeError("recipe key eval_tasks: 'custom' evaluates your own data and needs task=custom")
    records = load_custom_records(recipe, recipe.eval_file) if recipe.eval_file else validation
    seed = recipe.seed if recipe.eval_seed is None else recipe.eval_seed
    records = subsample(records, recipe.eval_limit, seed)
    try:
        result = evaluate_own_data(
            model,
            tokenizer,
            records,
            name=dataset_label(recipe),
            template=training_template(recipe, records),
            metric=recipe.eval_metric,
            answer_regex=recipe.answer_regex,
            max_new_tokens=recipe.max_new_tokens or 64,
            num_beams=recipe.num_beams or 1,
            batch_size=recipe.eval_batch_size,
            progress=progress_enabled(recipe.progress),
        )
    except ValueError as error:
        raise RecipeError(str(error)) from None
    result["source"] = recipe.eval_file or f"{recipe.train_file} (validation split, {len(validation)} records)"
    for name, rows in result.pop("predictions").items():
        if run_dir is not None and rows:
            path = Path(run_dir) / f"predictions-{name}.jsonl"
            write_jsonl(path, rows)
            result["datasets"][name]["predictions_file"] = str(path)
    return result


def mean_update_rank(model) -> float | None:
    """Mean numerical rank of ``ΔW = W_merged − W0`` over the adapted layers (singular values > 0.005, as HiRA
    counts); ``None`` for methods that cannot be merged."""
    from smoa.analysis.collect import NotAnalysableError, adapted_layers, merged_update
    from smoa.analysis.spectral import update_size

    ranks = []
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            try:
                before, after = merged_update(layer, layer.active_adapters[0])
            except NotAnalysableError:
                return None
            ranks.append(update_size(after - before).rank)
    return sum(ranks) / len(ranks) if ranks else None
