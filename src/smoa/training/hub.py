"""The Trainer side of a run: the Trainer subclass (verified checkpoints, labelled-positions loss, sharded saves) and
its callbacks (metrics log, non-finite guard), the ``TrainingArguments`` a recipe gives, finishing a run from its
last checkpoint, and the evaluation after training.

Distributed runs need nothing special: launch the same command with ``torchrun`` (DDP, DeepSpeed ZeRO or FSDP2,
picked by a recipe key) and Trainer shards the data and averages the gradients.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from smoa._progress import progress_enabled

from .checkpoints import CheckpointError, list_checkpoints, verify_checkpoint, write_manifest
from .data import dataset_label, load_custom_records, training_template
from .engines import connect_engine, enable_fsdp_on_cpu, engine_arguments, gathered_trainable_state, write_engine_record
from .recipe import Recipe, RecipeError


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


def trainer_classes():
    """``(SMoATrainer, MetricsLog, NonFiniteGuard)``, built on first use (transformers loads only then)."""
    from transformers import Trainer, TrainerCallback

    class SMoATrainer(Trainer):
        """Trainer whose checkpoints carry a manifest written last (see :mod:`.checkpoints`), and whose loss applies
        the LM head only at labelled positions (:func:`smoa.lm_head.causal_lm_loss`: the same loss and gradients)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not hasattr(self, "_smoa_guards"):  # looked up once, not at every micro-batch
                self._smoa_guards = [c for c in self.callback_handler.callbacks if isinstance(c, NonFiniteGuard)]
            for guard in self._smoa_guards:  # the loss is checked with the gradients, once per step
                guard.observe_loss(loss)
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
