"""world-modality-vla: predicted future world state as external memory for VLA policies."""

__version__ = "0.1.0"
