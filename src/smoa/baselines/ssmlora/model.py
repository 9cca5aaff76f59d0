"""SSMLoRA as a PEFT tuner: finds the target dense layers and wraps them in ``SSMLoRALayer``. Not mergeable."""

from __future__ import annotations

from smoa.baselines.common import DenseAdapterTuner

from .layer import SSMLoRALayer


class SSMLoRAModel(DenseAdapterTuner):
    """PEFT tuner of SSMLoRA. ``merge_and_unload``/``merge_adapter`` raise ``NotMergeableError``; ``unload`` works."""

    prefix: str = "ssmlora_"
    tuner_layer_cls = SSMLoRALayer
    layer_cls = SSMLoRALayer

    def reset_state(self) -> None:
        """Forget the recurrent state of every SSMLoRA layer (e.g. between independent batches of sequences)."""
        for module in self.model.modules():
            if isinstance(module, SSMLoRALayer):
                module.reset_state()
