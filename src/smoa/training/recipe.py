"""Training recipes: one YAML file per experiment, every key documented, overridable from the command line."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
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
    task: str = field(
        default="commonsense",
        metadata={"help": "Training family: commonsense, math, dialogue, memorize, or custom (your own train_file)."},
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "commonsense_170k.json / MetaMathQA file / ConvAI2 folder; default: packaged data. task=custom: "
            "your JSON, JSONL, CSV, Parquet file or datasets save_to_disk folder."
        },
    )
    data_format: str = field(
        default="auto",
        metadata={"help": "task=custom: instruction (Alpaca), chat (messages), text, or auto (from the fields)."},
    )
    fields: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "task=custom: your column names, e.g. {instruction: question, output: answer}."},
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Cap on tokens per training example; default: the template's (custom: 1024)."}
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "Use a seeded random slice of this many training examples."}
    )
    val_size: int = field(default=120, metadata={"help": "Held-out validation examples (best checkpoint by loss)."})
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt template (smoa, dora, metamath, dialogue, alpaca, memorize, chat, text); default: task's."
        },
    )
    loss_on: str | None = field(default=None, metadata={"help": "'response' or 'all'; default: the template's."})
    # optimisation
    epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use epochs)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    method_learning_rates: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Per-method peak learning rates (train and compare), e.g. {smoa: 3e-2, lora: 3e-4}."},
    )
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
    # scale-out engine: how the work is spread over processes, not what is computed (see docs/scale-out.md)
    deepspeed: str | None = field(
        default=None,
        metadata={
            "help": "DeepSpeed JSON, e.g. configs/deepspeed/zero3.json (ZeRO-2 / ZeRO-3); launch with torchrun. "
            "Needs `pip install -e '.[deepspeed]'`."
        },
    )
    fsdp: bool = field(
        default=False,
        metadata={"help": "Shard with torch FSDP (FSDP2, one unit per decoder layer); launch with torchrun."},
    )
    fsdp_config: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "With fsdp: transformers' fsdp_config settings, e.g. {reshard_after_forward: false}."},
    )
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
    eval_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Tasks evaluated after training (a dataset, commonsense, gsm8k or convai2); [] skips; default: "
            "the training task's (commonsense → commonsense, math → gsm8k, dialogue → convai2, memorize → memorize)."
        },
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Seeded subsample of each evaluation set."})
    eval_method: str = field(
        default="generate",
        metadata={
            "help": "'generate' (paper protocol), 'loglik' (the most likely answer label) or 'cloze' (the most likely "
            "answer text, lm-eval's acc / acc_norm); loglik and cloze score commonsense sets only."
        },
    )
    eval_seed: int | None = field(
        default=None, metadata={"help": "Seed of the evaluation subsample (default: the run's seed)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    num_beams: int | None = field(default=None, metadata={"help": "Override the task's beam count (4 in the papers)."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "User data folder for evaluation (LLM-Adapters dataset/, GSM8K, ConvAI2)."}
    )
    eval_file: str | None = field(
        default=None,
        metadata={"help": "task=custom: held-out file to evaluate on (same format); default: the validation split."},
    )
    eval_metric: str = field(
        default="auto",
        metadata={
            "help": "task=custom: exact_match, contains, regex, choice (records with options) or none; auto: "
            "choice with options, none for text, else exact_match. Loss and perplexity are always reported."
        },
    )
    answer_regex: str | None = field(
        default=None, metadata={"help": "eval_metric=regex: the pattern whose first group is the answer."}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens generated per answer; default: the task's (custom: 64)."}
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), _HINTS[f.name], RULES.get(f.name)))

        def bad(key: str, rule: str) -> RecipeError:
            return RecipeError(f"recipe key {key}={getattr(self, key)!r} is invalid: {rule}")

        for method, rate in self.method_learning_rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or not math.isfinite(rate):
                raise RecipeError(
                    f"recipe key method_learning_rates.{method}={rate!r} is invalid: it must be a positive number"
                )
        for column, name in self.fields.items():
            if not isinstance(name, str) or not name:
                raise RecipeError(f"recipe key fields.{column}={name!r} is invalid: it must be a column name")
        if self.task != "custom":  # keys of your own data that any other task would ignore without a word
            for key, default in (("eval_file", None), ("fields", {}), ("data_format", "auto"), ("eval_metric", "auto")):
                if getattr(self, key) != default:
                    raise bad(key, f"it applies with task=custom only (task={self.task!r}); remove it")
        if self.answer_regex is not None and self.eval_metric != "regex":
            raise bad("answer_regex", "it applies with eval_metric=regex only; set eval_metric=regex or remove it")
        if self.task == "custom" and not self.train_file:
            raise RecipeError(
                "recipe key train_file is required with task=custom: give your JSON, JSONL, CSV or Parquet file"
            )
        if self.eval_tasks is None:
            self.eval_tasks = [
                {
                    "commonsense": "commonsense",
                    "math": "gsm8k",
                    "dialogue": "convai2",
                    "memorize": "memorize",
                    "custom": "custom",
                }[self.task]
            ]
        if self.deepspeed is not None and self.fsdp:
            raise RecipeError(
                f"recipe keys deepspeed={self.deepspeed!r} and fsdp=true are exclusive: choose one scale-out engine"
            )
        if self.fsdp_config and not self.fsdp:
            raise bad("fsdp_config", "it applies with fsdp=true only; set fsdp=true or remove it")
        if self.fsdp_config.get("version", 2) != 2:
            raise RecipeError(
                f"recipe key fsdp_config.version={self.fsdp_config['version']!r} is invalid: it must be 2 (FSDP2; "
                "transformers deprecates FSDP1)"
            )
        if self.batch_size % self.micro_batch_size:
            raise bad("batch_size", f"must be a multiple of micro_batch_size={self.micro_batch_size}")
        if self.save_steps % self.eval_steps:
            raise bad("save_steps", f"must be a multiple of eval_steps={self.eval_steps} (best checkpoint by loss)")

    @property
    def run_dir(self) -> str:
        return self.output_dir or os.path.join("runs", self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_method(self, method: str) -> Recipe:
        """This recipe for ``method``: its learning rate from ``method_learning_rates`` when listed there."""
        rate = float(self.method_learning_rates.get(method, self.learning_rate))
        return dataclasses.replace(self, method=method, learning_rate=rate, method_learning_rates={})

    def fingerprint(self) -> str:
        """Hash of what determines the training result (not output/logging/evaluation options).

        Keys at their default value are left out, so a key added to the recipe later (at a default that keeps the
        old behaviour) does not change the fingerprint of runs made before it existed."""
        defaults = {
            f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(self)
        }
        relevant = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_FINGERPRINT and v != defaults[k]}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def differences(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (saved value, this recipe's value)}`` for the keys of the fingerprint that differ from ``saved``
        (a recipe's :meth:`to_dict`; keys it lacks count as their default)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in NOT_IN_FINGERPRINT:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            before, now = saved.get(f.name, default), getattr(self, f.name)
            if json.dumps(before, sort_keys=True, default=str) != json.dumps(now, sort_keys=True, default=str):
                out[f.name] = (before, now)
        return out


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))
# keys that change where results go or how they are shown and evaluated, not what training computes
NOT_IN_FINGERPRINT = frozenset(
    {
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
        "eval_file",
        "eval_metric",
        "answer_regex",
        "max_new_tokens",
        "name",
        # the engine: same update, another distribution of the work (checkpoints record it; see docs/scale-out.md)
        "deepspeed",
        "fsdp",
        "fsdp_config",
    }
)
_HINTS = typing.get_type_hints(Recipe)


@dataclass(frozen=True)
class Rule:
    """What a recipe value must be besides its type: one of ``choices``, or ≥ ``min`` (> ``above``); ``or_value``
    is one more allowed value (``max_steps: -1``)."""

    choices: tuple[Any, ...] | None = None
    min: float | None = None
    above: float | None = None
    or_value: Any = None

    def text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        text = " and ".join(parts)
        return f"{text} (or {self.or_value})" if self.or_value is not None else text

    def holds(self, value: Any) -> bool:
        if value is None or (self.or_value is not None and value == self.or_value):
            return True
        if self.choices is not None:
            return value in self.choices
        if self.min is not None and value < self.min:
            return False
        return not (self.above is not None and not value > self.above)


STEPS = Rule(min=1)
RULES: dict[str, Rule] = {
    "dtype": Rule(choices=("float32", "bfloat16", "float16")),
    "budget": Rule(choices=("paper", "matched")),
    "target_params": STEPS,
    "task": Rule(choices=("commonsense", "math", "dialogue", "memorize", "custom")),
    "data_format": Rule(choices=("auto", "instruction", "chat", "text")),
    "max_length": STEPS,
    "eval_metric": Rule(choices=("auto", "exact_match", "contains", "regex", "choice", "none")),
    "max_new_tokens": STEPS,
    "train_limit": STEPS,
    "val_size": STEPS,
    "template": Rule(choices=("smoa", "dora", "metamath", "dialogue", "alpaca", "memorize", "chat", "text")),
    "loss_on": Rule(choices=("response", "all")),
    "epochs": Rule(above=0),
    "max_steps": Rule(min=1, or_value=-1),
    "learning_rate": Rule(above=0),
    "batch_size": STEPS,
    "micro_batch_size": STEPS,
    "warmup_steps": Rule(min=0),
    "weight_decay": Rule(min=0),
    "lr_scheduler": Rule(choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                  "constant_with_warmup", "inverse_sqrt")),
    "max_grad_norm": Rule(min=0),
    "seed": Rule(min=0),
    "precision": Rule(choices=("fp32", "bf16", "fp16")),
    "eval_steps": STEPS,
    "save_steps": STEPS,
    "keep_last": STEPS,
    "logging_steps": STEPS,
    "eval_limit": STEPS,
    "eval_method": Rule(choices=("generate", "loglik", "cloze")),
    "eval_seed": Rule(min=0),
    "eval_batch_size": STEPS,
    "num_beams": STEPS,
}  # fmt: skip


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        inner = _type_name(args[0])
        return f"{inner} or null"
    if typing.get_origin(hint) is list:
        return "a list of strings"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def check_value(key: str, value: Any, hint: Any, rule: Rule | None = None) -> Any:
    """``value`` as the recipe key's type (a number for a float key; a single string for a list key), checked
    against its rule; raises :class:`RecipeError` naming the key, the value and what it must be."""

    given = value

    def bad(what: str) -> RecipeError:
        return RecipeError(f"recipe key {key}={given!r} is invalid: it must be {what}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(_type_name(_HINTS[key]))
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                raise bad(_type_name(_HINTS[key])) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise bad(_type_name(_HINTS[key]))
    elif origin is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
    elif origin is dict and not isinstance(value, dict):
        raise bad("a mapping, e.g. {r: 16}")
    if rule is not None and not rule.holds(value):
        raise bad(rule.text())
    return value


def recipe_help() -> str:
    """One line per recipe key: meaning, type and rule (what the validator enforces), default."""
    lines = []
    for f in dataclasses.fields(Recipe):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rule = RULES.get(f.name)
        must = _type_name(_HINTS[f.name]) + (f", {rule.text()}" if rule else "")
        lines.append(f"  {f.name:24s} {f.metadata.get('help', '')} ({must}) [default: {default!r}]")
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
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else None
    except yaml.YAMLError as err:  # a mapping value holding a key twice included
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({err})") from err
    return key, value


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML file holds one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKeyError(
                f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); keep one"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml_mapping(path: str, what: str, error: type[RecipeError] = RecipeError) -> dict[str, Any]:
    """The mapping a YAML file holds; ``error`` (naming the file as ``what``) when it is missing, not YAML, holds a
    key twice in one mapping, or is not a mapping."""
    try:
        with open(path) as f:
            loaded = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError as err:
        raise error(f"{what} {path} does not exist (see recipes/ for the shipped ones)") from err
    except _DuplicateKeyError as err:
        raise error(f"{what} {path}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{what} {path} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise error(f"{what} {path} must hold a mapping of keys, not {type(loaded).__name__}")
    return loaded


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """``data`` with ``key=value`` overrides applied (``method_args.r=16`` sets one method setting); unknown keys
    are refused with the nearest valid one."""
    data = dict(data)
    for text in overrides or []:
        key, value = parse_override(text)
        if key.startswith("method_args."):
            data["method_args"] = {**data.get("method_args", {}), key.split(".", 1)[1]: value}
            continue
        _check_keys({key: value}, f"override {text!r}")
        data[key] = value
    return data


def load_recipe(path: str | None = None, overrides: list[str] | None = None, **values: Any) -> Recipe:
    """Read a YAML recipe (or start from the defaults), apply ``key=value`` overrides and keyword values.

    Raises:
        RecipeError: unreadable file, unknown key (with the nearest valid one), or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_mapping(path, "recipe file")
        _check_keys(loaded, f"recipe file {path}")
        data.update(loaded)
    data = apply_overrides(data, overrides)
    _check_keys(values, "argument")
    data.update({k: v for k, v in values.items() if v is not None})
    try:
        return Recipe(**data)
    except TypeError as err:
        raise RecipeError(f"recipe {path or '(defaults)'}: {err}") from err
