"""smoa: SMoA, the Spectrum Modulation Adapter, as a PEFT method, with its baselines, tasks and analyses."""

__version__ = "0.1.0"
