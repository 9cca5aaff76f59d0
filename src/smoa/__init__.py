"""smoa: SMoA, the Spectrum Modulation Adapter, as a PEFT method, with its baselines, tasks and analyses.

``import smoa`` registers SMoA with PEFT, so ``peft.get_peft_model(model, smoa.SMoAConfig(...))``,
``save_pretrained``, ``PeftModel.from_pretrained`` and ``merge_and_unload`` work as for a built-in method.
"""

import logging


def _drop_bitsandbytes_kernel_hub_notice(record: logging.LogRecord) -> bool:
    # bitsandbytes' CPU backend, on CPUs with AVX512-BF16, offers to fetch an optional kernel from the hub (package
    # `kernels`) at import and logs a warning when it cannot; its built-in CPU kernels are used either way
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_bitsandbytes_kernel_hub_notice)

from . import baselines  # noqa: E402  (registers MeLoRA, MoRA and SSMLoRA with PEFT)
from .adapter import SMoAConfig, SMoALayer, SMoAModel, smoa_layers  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SMoAConfig", "SMoALayer", "SMoAModel", "__version__", "baselines", "smoa_layers"]
