"""worldloop: MLOps for instruction-driven interactive game world models."""

__version__ = "0.1.0"
