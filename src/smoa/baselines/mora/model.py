"""MoRA as a PEFT tuner: finds the target dense layers and wraps them in ``MoRALayer``."""

from __future__ import annotations

from smoa.baselines.common import DenseAdapterTuner

from .layer import MoRALayer


class MoRAModel(DenseAdapterTuner):
    """PEFT tuner of MoRA (register with ``smoa.baselines``; build with ``get_peft_model(model, MoRAConfig(...))``)."""

    prefix: str = "mora_"
    tuner_layer_cls = MoRALayer
    layer_cls = MoRALayer
