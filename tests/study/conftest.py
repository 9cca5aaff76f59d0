"""The training suite's tiny model folder and training file serve the study tests too."""

from tests.training.conftest import tiny_model_dir, train_file  # noqa: F401
