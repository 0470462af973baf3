"""Weights in and out: safetensors only, never pickle (DESIGN.md §5.1)."""

from worldloop.model.weights.safetensors_io import load_model, load_state, save_model, save_state
from worldloop.model.weights.wan import LoadReport, export_wan22_layout, load_wan22_experts
from worldloop.model.weights.wan_vae import load_wan_vae

__all__ = [
    "LoadReport",
    "export_wan22_layout",
    "load_model",
    "load_state",
    "load_wan22_experts",
    "load_wan_vae",
    "save_model",
    "save_state",
]
