"""Spectral analysis of adapters: what an adapter did to the model's weights, as the SMoA paper shows it.

- :mod:`.spectral` — pure measures (tensors in, numbers out): numerical rank of ΔW, spectrum shift by region,
  alignment with the layer-input covariance, intruder dimensions, SMoA block energy.
- :mod:`.collect` — ΔW of any mergeable PEFT method read as ``W_merged − W0``, layer-input covariances from
  forward hooks, and the per-layer walk over a PEFT model (:class:`SpectralAnalyzer`, :func:`analyse_adapters`).
- :mod:`.ceilings` — the update-rank ceiling table of methods for a model config, without weights.
- :mod:`.calibration` — calibration prompts from a file or a task.
- :mod:`.report` — the report folder: PNG figures, HTML, markdown, JSON and CSV.

The command line is ``smoa analyze`` (:mod:`smoa.cli.analyze`).
"""

from .ceilings import CeilingRow, rank_ceiling_table
from .collect import (
    AdapterAnalysis,
    LayerAnalysis,
    NotAnalysableError,
    SpectralAnalyzer,
    activation_covariances,
    adapted_layers,
    analyse_adapters,
    merged_update,
)
from .report import write_report
from .spectral import (
    block_energy_share,
    block_energy_shares,
    covariance_eigenbasis,
    intruder_dimensions,
    numerical_rank,
    region_overlap,
    spectrum_shift,
    update_size,
)

__all__ = [
    "AdapterAnalysis",
    "CeilingRow",
    "LayerAnalysis",
    "NotAnalysableError",
    "SpectralAnalyzer",
    "activation_covariances",
    "adapted_layers",
    "analyse_adapters",
    "block_energy_share",
    "block_energy_shares",
    "covariance_eigenbasis",
    "intruder_dimensions",
    "merged_update",
    "numerical_rank",
    "rank_ceiling_table",
    "region_overlap",
    "spectrum_shift",
    "update_size",
    "write_report",
]
