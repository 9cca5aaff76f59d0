"""Fair comparisons of methods: per-method learning-rate sweeps on validation loss, seeds, paired intervals."""

from .protocol import Study, StudyError, load_study, parse_study
from .runner import run_study
from .summary import paired_bootstrap, summarize, write_summary

__all__ = [
    "Study",
    "StudyError",
    "load_study",
    "paired_bootstrap",
    "parse_study",
    "run_study",
    "summarize",
    "write_summary",
]
