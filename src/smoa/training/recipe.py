"""Training recipes: one YAML file per experiment, every key documented, overridable from the command line."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe file or override is invalid."""


@dataclass
class Recipe:
    """Everything one training run needs. Field help texts are what ``smoa train --help-recipe`` prints."""

    name: str = field(default="run", metadata={"help": "Run name (default output folder runs/<name>)."})
    # model and method
    model: str = field(
        default="default", metadata={"help": "Base model: 'default' (SmolLM2-135M), a folder or hub id."}
    )
    dtype: str = field(default="float32", metadata={"help": "Base weights dtype: float32, bfloat16 or float16."})
    method: str = field(default="smoa", metadata={"help": "Method name from `smoa methods` (smoa, lora, hira, ...)."})
    budget: str = field(default="paper", metadata={"help": "'paper' settings or 'matched' trainable parameters."})
    target_params: int | None = field(
        default=None, metadata={"help": "With budget=matched: the trainable-parameter target (default SMoA r=32,K=2)."}
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt (default q_proj,k_proj,v_proj,up_proj,down_proj)."}
    )
    method_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of the method's config, e.g. {r: 16, lora_dropout: 0.05}."}
    )
    # data
    task: str = field(default="commonsense", metadata={"help": "Training family: commonsense, math or dialogue."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "commonsense_170k.json / MetaMathQA file / ConvAI2 folder; default: packaged data."},
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "Use a seeded random slice of this many training examples."}
    )
    val_size: int = field(default=120, metadata={"help": "Held-out validation examples (best checkpoint by loss)."})
    template: str | None = field(
        default=None, metadata={"help": "Prompt template (smoa, dora, metamath, dialogue); default: the task's."}
    )
    loss_on: str | None = field(default=None, metadata={"help": "'response' or 'all'; default: the template's."})
    # optimisation
    epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use epochs)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Global batch size (examples per optimizer step)."})
    micro_batch_size: int = field(
        default=8, metadata={"help": "Examples per forward pass and device; accumulation makes up the batch size."}
    )
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(
        default="linear", metadata={"help": "Scheduler name as in transformers (linear, cosine)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and slicing."})
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Batch examples of similar length (less padding; the batches differ from random ones)."},
    )
    precision: str = field(default="fp32", metadata={"help": "Mixed precision: fp32, bf16 or fp16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    # checkpoints and logging
    output_dir: str | None = field(default=None, metadata={"help": "Run folder (default runs/<name>)."})
    eval_steps: int = field(default=50, metadata={"help": "Validation loss every this many steps."})
    save_steps: int = field(
        default=50, metadata={"help": "Checkpoint every this many steps (a multiple of eval_steps)."}
    )
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept besides the best one."})
    logging_steps: int = field(default=10, metadata={"help": "Metrics log (metrics.jsonl) every this many steps."})
    tensorboard: bool = field(default=False, metadata={"help": "Also log to TensorBoard (needs `tensorboard`)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    # evaluation after training
    eval_tasks: list[str] = field(
        default_factory=lambda: ["commonsense"],
        metadata={"help": "Tasks evaluated after training (a dataset, commonsense, gsm8k or convai2); [] skips."},
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Seeded subsample of each evaluation set."})
    eval_method: str = field(
        default="generate", metadata={"help": "'generate' (paper protocol) or 'loglik' (fast, commonsense only)."}
    )
    eval_seed: int | None = field(
        default=None, metadata={"help": "Seed of the evaluation subsample (default: the run's seed)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    num_beams: int | None = field(default=None, metadata={"help": "Override the task's beam count (4 in the papers)."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "User data folder for evaluation (LLM-Adapters dataset/, GSM8K, ConvAI2)."}
    )

    def __post_init__(self) -> None:
        def bad(key: str, rule: str) -> RecipeError:
            return RecipeError(f"recipe key {key}={getattr(self, key)!r} is invalid: {rule}")

        # YAML 1.1 reads `1e-3` (no dot) as a string; numbers are meant
        for key in ("learning_rate", "weight_decay", "epochs", "max_grad_norm"):
            value = getattr(self, key)
            if isinstance(value, str):
                try:
                    setattr(self, key, float(value))
                except ValueError:
                    raise bad(key, "must be a number") from None

        if self.task not in ("commonsense", "math", "dialogue"):
            raise bad("task", "choose commonsense, math or dialogue")
        if self.budget not in ("paper", "matched"):
            raise bad("budget", "choose 'paper' or 'matched'")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise bad("precision", "choose fp32, bf16 or fp16")
        if self.eval_method not in ("generate", "loglik"):
            raise bad("eval_method", "choose 'generate' or 'loglik'")
        if self.loss_on not in (None, "response", "all"):
            raise bad("loss_on", "choose 'response' or 'all'")
        for key in ("batch_size", "micro_batch_size", "eval_steps", "save_steps", "logging_steps", "eval_batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be an integer >= 1")
        if self.batch_size % self.micro_batch_size:
            raise bad("batch_size", f"must be a multiple of micro_batch_size={self.micro_batch_size}")
        if self.save_steps % self.eval_steps:
            raise bad("save_steps", f"must be a multiple of eval_steps={self.eval_steps} (best checkpoint by loss)")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be > 0")
        if self.keep_last < 1:
            raise bad("keep_last", "must be >= 1")
        if self.train_limit is not None and self.train_limit < 1:
            raise bad("train_limit", "must be >= 1 or null")
        if self.val_size < 1:
            raise bad("val_size", "must be >= 1 (the best checkpoint is chosen by validation loss)")
        if not isinstance(self.method_args, dict):
            raise bad("method_args", "must be a mapping, e.g. {r: 16}")
        if isinstance(self.eval_tasks, str):
            self.eval_tasks = [self.eval_tasks]

    @property
    def run_dir(self) -> str:
        return self.output_dir or os.path.join("runs", self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what determines the training result (not output/logging/evaluation options).

        Keys at their default value are left out, so a key added to the recipe later (at a default that keeps the
        old behaviour) does not change the fingerprint of runs made before it existed."""
        ignored = {
            "output_dir",
            "progress",
            "tensorboard",
            "logging_steps",
            "eval_tasks",
            "eval_limit",
            "eval_method",
            "eval_batch_size",
            "eval_seed",
            "num_beams",
            "eval_data_dir",
            "name",
        }
        defaults = {
            f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(self)
        }
        relevant = {k: v for k, v in self.to_dict().items() if k not in ignored and v != defaults[k]}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


def recipe_help() -> str:
    """One line per recipe key with its default and meaning."""
    lines = []
    for f in dataclasses.fields(Recipe):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name:24s} {f.metadata.get('help', '')} [default: {default!r}]")
    return "\n".join(lines)


def _check_keys(values: dict[str, Any], source: str) -> None:
    for key in values:
        if key not in RECIPE_KEYS:
            near = difflib.get_close_matches(key, RECIPE_KEYS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise RecipeError(f"{source}: unknown recipe key '{key}'{hint} (`smoa train --help-recipe` lists them)")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``lr=1e-4``, ``target_modules=[q_proj,v_proj]``, ``train_file=null``)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({err})") from err
    if key.startswith("method_args."):
        return key, value
    return key, value


def load_recipe(path: str | None = None, overrides: list[str] | None = None, **values: Any) -> Recipe:
    """Read a YAML recipe (or start from the defaults), apply ``key=value`` overrides and keyword values.

    Raises:
        RecipeError: unreadable file, unknown key (with the nearest valid one), or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError as err:
            raise RecipeError(f"recipe file {path} does not exist (see recipes/ for the shipped ones)") from err
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise RecipeError(f"recipe file {path} must hold a mapping of recipe keys, not {type(loaded).__name__}")
        _check_keys(loaded, f"recipe file {path}")
        data.update(loaded)
    for text in overrides or []:
        key, value = parse_override(text)
        if key.startswith("method_args."):
            data.setdefault("method_args", {})
            data["method_args"] = {**data["method_args"], key.split(".", 1)[1]: value}
            continue
        _check_keys({key: value}, f"override {text!r}")
        data[key] = value
    _check_keys(values, "argument")
    data.update({k: v for k, v in values.items() if v is not None})
    try:
        return Recipe(**data)
    except TypeError as err:
        raise RecipeError(f"recipe {path or '(defaults)'}: {err}") from err
