"""What a generator replica serves and how: :class:`EngineConfig`, validated once and passed on typed.

``model`` is a :class:`~worldloop.platform.uri.ModelURI`, parsed when the config is validated (from
``build_app`` arguments or ``worldloop serve run`` options); the generator, the engines and the
sequence-parallel workers receive this object, never its text or a dict of it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worldloop.model.config import CompileMode
from worldloop.platform.uri import ModelURI, ModelURIField

CHAMPION = ModelURI.parse("models:/worldloop@champion")


class EngineConfig(BaseModel):
    """The model and how it runs on a replica's devices. Size and fps default to the model's spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelURIField = Field(CHAMPION, description="preset:NAME, a checkpoint folder/URI or models:/.")
    height: int | None = Field(None, ge=16, le=2048, description="Frame height (default: trained size).")
    width: int | None = Field(None, ge=16, le=2048, description="Frame width (default: trained size).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, else fp32.")
    fp8: bool = Field(False, description="FP8 (e4m3) weights + dynamic activation scales; CUDA sm_89+.")
    attention: Literal["sdpa", "sage", "auto"] = Field("sdpa", description="Self-attention kernel.")
    compile: CompileMode = Field(
        "off",
        description="torch.compile: off; blocks (each DiT block, regional); step (each block's whole "
        "denoising step, CUDA graphs on CUDA; sp 1). true/false are read as blocks/off.",
    )
    sp: int = Field(1, ge=1, le=64, description="Sequence-parallel workers per replica (devices).")
    seed: int = Field(0, ge=0, description="Weights seed of preset: models.")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_flag(cls, value: Any) -> Any:
        """The boolean this option used to be (it compiled the DiT blocks): true → blocks, false → off."""
        if isinstance(value, bool):
            return "blocks" if value else "off"
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return "blocks" if value.lower() in _TRUE else "off"
        return value

    @model_validator(mode="after")
    def _step_on_one_device(self) -> EngineConfig:
        if self.compile == "step" and self.sp > 1:
            raise ValueError(
                "compile='step' runs on one device per replica: its graph has not been validated with "
                "the sequence-parallel all-to-alls; use compile='blocks' with sp > 1"
            )
        return self


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
