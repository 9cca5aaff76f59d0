"""Training: recipes, runs built on transformers' Trainer (and so on accelerate), checkpoints, comparisons."""

from .recipe import Recipe, RecipeError, load_recipe
from .trainer import TrainResult, run_training

__all__ = ["Recipe", "RecipeError", "TrainResult", "load_recipe", "run_training"]
