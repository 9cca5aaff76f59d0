"""One training run: recipe → run folder → data → model + method → Trainer → adapter, metrics and evaluation.

The rooms it calls: :mod:`.run_folder` (lock, checks, extension), :mod:`.data` (records → tokenised examples),
:mod:`.preflight` (settings checked before the model loads), :mod:`.hub` (the Trainer subclass, its callbacks and
the evaluation after training), :mod:`.engines` (DDP, ZeRO, FSDP2).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoa._memory import peak_memory_mib, peak_memory_reset
from smoa._progress import progress_bars

from .checkpoints import latest_valid_checkpoint, save_dir_atomic, verify_checkpoint, write_json_atomic
from .data import load_training_records, tokenize_records, training_template
from .engines import (
    check_engine_of_checkpoint,
    gathered_trainable_state,
    load_for_evaluation,
    share_main_process_buffers,
    with_whole_base_count,
)
from .hub import (
    evaluate_model,
    finish_from_checkpoint,
    mean_update_rank,
    total_steps,
    trainer_classes,
    training_arguments,
)
from .model_card import save_adapter
from .preflight import check_evaluation_settings, check_loss_tokens, method_settings_error
from .recipe import Recipe, RecipeError
from .run_folder import checkpoint_step, naming_a_full_disk, prepare_run_dir, unlock_run_dir


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


# --------------------------------------------------------------------------------------------------- training
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
    SMoATrainer, MetricsLog, NonFiniteGuard = trainer_classes()
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
