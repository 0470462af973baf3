"""Post-training quantisation applied to a built model (FP8 e4m3 linears, DESIGN.md §5.4)."""

from worldloop.model.quant.fp8 import FP8Linear, fp8_supported, quantize_fp8

__all__ = ["FP8Linear", "fp8_supported", "quantize_fp8"]
