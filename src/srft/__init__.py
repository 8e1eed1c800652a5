"""srft: single-stage supervised and reinforcement fine-tuning for reasoning."""

__version__ = "0.1.0"
