"""A run's data: the training family's records (or your own file), the validation split, the prompt template and
tokenisation; every data error is raised here, before a model loads."""

from __future__ import annotations

from .recipe import Recipe, RecipeError

TASK_TEMPLATES = {"commonsense": "smoa", "math": "metamath", "dialogue": "dialogue", "memorize": "memorize"}


def load_training_records(recipe: Recipe) -> tuple[list, list]:
    """``(train, validation)`` records: the family's training set (or your own ``train_file`` with task=custom),
    optionally a seeded slice, minus ``val_size``. Your own ``eval_file`` is read here too, so that every data
    error comes before the model loads. task=memorize trains on every pair and validates on ``val_size`` of those
    same pairs: memorising them is the task."""
    import random

    from smoa.tasks import load_train_records
    from smoa.tasks.records import DataFormatError, split_validation

    if recipe.task == "memorize":
        if recipe.train_file or recipe.train_limit is not None:
            key = "train_file" if recipe.train_file else "train_limit"
            raise RecipeError(f"recipe key {key} does not apply to task=memorize (its pairs are fixed); remove it")
        records = load_train_records("memorize")
        if not 0 < recipe.val_size <= len(records):
            raise RecipeError(f"recipe key val_size={recipe.val_size} must be 1 … {len(records)} for task=memorize")
        return records, [
            records[i] for i in sorted(random.Random(recipe.seed).sample(range(len(records)), recipe.val_size))
        ]
    if recipe.task == "custom":
        records = load_custom_records(recipe, recipe.train_file)
        if recipe.eval_file:
            check_same_format(records, load_custom_records(recipe, recipe.eval_file), recipe)
    else:
        standin = recipe.train_limit + recipe.val_size if recipe.train_limit else 10_000  # math without MetaMathQA
        try:
            records = load_train_records(recipe.task, recipe.train_file, standin_size=standin, seed=recipe.seed)
        except DataFormatError as error:
            if not recipe.train_file or "missing field" not in str(error):
                raise
            raise DataFormatError(
                f"{error}. recipe key train_file holds no {recipe.task} training records{_own_format(recipe)}; if it "
                "is your own data, set task: custom (or --task custom)"
            ) from None
    if not records:
        raise RecipeError(f"recipe key train_file={recipe.train_file!r}: the file holds no training records")
    if recipe.train_limit is not None and recipe.train_limit + recipe.val_size < len(records):
        picked = sorted(random.Random(recipe.seed).sample(range(len(records)), recipe.train_limit + recipe.val_size))
        records = [records[i] for i in picked]
    if recipe.val_size >= len(records):
        raise RecipeError(
            f"recipe key val_size={recipe.val_size} leaves no training data ({len(records)} records"
            + (f" in {recipe.train_file}" if recipe.train_file else "")
            + "); lower it"
        )
    return split_validation(records, recipe.val_size, recipe.seed)


def _own_format(recipe: Recipe) -> str:
    """``" but instruction records (your own data)"`` when ``train_file`` reads as task=custom data, else ``""``."""
    from smoa.tasks.custom import FORMAT_NAMES, load_records, template_name
    from smoa.tasks.records import DataFormatError

    try:
        records, _ = load_records(recipe.train_file, "auto", recipe.fields)
    except (DataFormatError, ValueError, KeyError, OSError):
        return ""
    return f" but {FORMAT_NAMES[template_name(records)]} records (your own data's format)" if records else ""


def load_custom_records(recipe: Recipe, path: str) -> list:
    """Your own records from ``path`` in the recipe's ``data_format`` and ``fields`` (:mod:`smoa.tasks.custom`)."""
    from smoa.tasks.custom import load_records

    records, _ = load_records(path, recipe.data_format, recipe.fields, name=dataset_label(recipe))
    return records


def check_same_format(train: list, held_out: list, recipe: Recipe) -> None:
    """Refuse an ``eval_file`` whose records are of another format than the training file's."""
    from smoa.tasks.custom import FORMAT_NAMES, template_name
    from smoa.tasks.records import DataFormatError

    found, expected = template_name(held_out), template_name(train)
    if found != expected:
        raise DataFormatError(
            f"{recipe.eval_file} holds {FORMAT_NAMES[found]} records, but {recipe.train_file} holds "
            f"{FORMAT_NAMES[expected]} records; evaluate on records of the training format"
        )


def dataset_label(recipe: Recipe) -> str:
    """The name your own data's results carry: the training file's name without suffixes."""
    from smoa.tasks.custom import dataset_name

    return dataset_name(recipe.train_file or "custom")


def training_template(recipe: Recipe, records: list):
    """The prompt template of the run: the recipe's ``template``, else the task's; with task=custom, the one of the
    records' format (instruction → alpaca, chat → chat, text → text). ``max_length`` overrides its cap."""
    from smoa.tasks.custom import template_name
    from smoa.tasks.prompts import get_template

    name = recipe.template or (template_name(records) if recipe.task == "custom" else TASK_TEMPLATES[recipe.task])
    template = get_template(name)
    if recipe.task == "custom" and template.chat != bool(records and records[0].messages):
        raise RecipeError(
            f"recipe key template={name!r} does not fit the records of {recipe.train_file} "
            f"({'chat' if records and records[0].messages else 'not chat'}); leave template unset"
        )
    return template.with_max_length(recipe.max_length)


def tokenize_records(records: list, tokenizer, recipe: Recipe, template=None) -> list[dict[str, list[int]]]:
    from smoa.tasks.prompts import tokenize_for_training

    template = template or training_template(recipe, records)
    try:
        return [tokenize_for_training(r, tokenizer, template, recipe.loss_on) for r in records]
    except ValueError as error:  # a chat template that cannot render the records (named in the message)
        raise RecipeError(f"recipe {recipe.name!r}, model {recipe.model!r}: {error}") from None
