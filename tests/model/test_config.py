"""Model/training configs: presets, derived sizes, YAML round trip, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worldloop.config_io import ConfigError, load_yaml, save_yaml
from worldloop.model.config import ModelConfig, a14b, load_preset, small, tiny
from worldloop.model.train.config import Stage, TrainConfig, stage_preset


def test_a14b_matches_wan22_dims() -> None:
    cfg = a14b()
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers) == (5120, 13824, 40, 40)
    assert cfg.head_dim == 128 and cfg.num_experts == 2 and cfg.boundary == 0.900
    assert (cfg.vae.temporal_stride, cfg.vae.spatial_stride, cfg.latent_channels) == (4, 8, 16)
    assert cfg.patch_size == (1, 2, 2) and cfg.in_channels == 36  # Wan I2V in_dim
    assert 13.5e9 < cfg.parameters_per_expert() < 14.5e9


def test_small_is_wan_1_3b_sized() -> None:
    cfg = small()
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers) == (1536, 8960, 12, 30)
    assert 1.2e9 < cfg.parameters_per_expert() < 1.6e9


def test_derived_token_counts() -> None:
    cfg = tiny()
    assert cfg.latent_size(64, 96) == (8, 12)
    assert cfg.tokens_per_frame(64, 96) == 4 * 6
    with pytest.raises(ValueError, match="divisible by 16x16"):
        cfg.tokens_per_frame(64, 72)
    c = cfg.causal
    assert cfg.cache_frames() == 1 + (c.num_sink_blocks - 1 + c.window_blocks) * c.block_frames


def test_invalid_model_config_names_the_field() -> None:
    data = tiny().model_dump()
    data["num_heads"] = 5  # 128 is not divisible by 5
    with pytest.raises(ValidationError, match="num_heads"):
        ModelConfig.model_validate(data)
    data = tiny().model_dump()
    data["causal"]["window_blocks"] = 0
    with pytest.raises(ValidationError) as info:
        ModelConfig.model_validate(data)
    assert info.value.errors()[0]["loc"] == ("causal", "window_blocks")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        load_preset("huge")


def test_model_yaml_round_trip(tmp_path: Path) -> None:
    for cfg in (tiny(), small(), a14b()):
        path = save_yaml(cfg, tmp_path / f"{cfg.name}.yaml")
        assert load_yaml(ModelConfig, path) == cfg


def test_yaml_errors_name_file_and_dotted_field(tmp_path: Path) -> None:
    path = save_yaml(tiny(), tmp_path / "m.yaml")
    text = path.read_text().replace("window_blocks: 2", "window_blocks: -1")
    path.write_text(text + "bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(ModelConfig, path)
    message = str(info.value)
    assert str(path) in message and "causal.window_blocks" in message and "bogus" in message
    path.write_text("dim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(ModelConfig, path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(ModelConfig, path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(ModelConfig, tmp_path / "missing.yaml")


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("scale", ["tiny", "a14b"])
def test_stage_presets_validate_and_round_trip(stage: Stage, scale: str, tmp_path: Path) -> None:
    cfg = stage_preset(stage, scale=scale)
    assert cfg.stage is stage and cfg.model_preset == scale
    assert load_yaml(TrainConfig, save_yaml(cfg, tmp_path / "t.yaml")) == cfg
    if scale == "a14b" and stage is Stage.action:
        assert [p.frames for p in cfg.curriculum] == [45, 81, 149]  # the paper's curriculum


def test_train_config_rules() -> None:
    base = stage_preset(Stage.action).model_dump()
    bad = dict(base, curriculum=[{"frames": 10, "steps": 5}])
    with pytest.raises(ValidationError, match="4k\\+1"):
        TrainConfig.model_validate(bad)
    bad = dict(base, curriculum=[{"frames": 17, "steps": 5}, {"frames": 9, "steps": 5}])
    with pytest.raises(ValidationError, match="increase"):
        TrainConfig.model_validate(bad)
    with pytest.raises(ValidationError, match="zero_stage"):
        TrainConfig.model_validate(dict(base, zero_stage=4))
    with pytest.raises(ValidationError, match="camera encoder frozen"):
        TrainConfig.model_validate(dict(base, stage="instruction"))
    with pytest.raises(ValidationError, match="needs a 'distill' section"):
        TrainConfig.model_validate(dict(base, stage="distill"))
    distill = stage_preset(Stage.distill).model_dump()
    distill["distill"]["steps_per_expert"] = (3, 2)
    with pytest.raises(ValidationError, match="add up"):
        TrainConfig.model_validate(distill)


@pytest.mark.parametrize("scale", ["tiny", "small", "a14b"])
def test_student_stages_use_clip_lengths_that_fill_whole_blocks(scale: str) -> None:
    from worldloop.model.config import load_preset
    from worldloop.model.train.config import stage_preset

    model = load_preset(scale)
    for stage in ("distill", "long"):
        for phase in stage_preset(stage, scale=scale).curriculum:
            latent = model.vae.latent_frames(phase.frames)
            assert (latent - 1) % model.causal.block_frames == 0, (scale, stage, phase.frames)
