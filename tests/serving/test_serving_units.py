"""Serving pieces that need no Ray: deployment options, sessions and keys, images, the engine."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr, ValidationError

from worldloop.serving.app import ServeOptions, build_app, deployment_options
from worldloop.serving.config import EngineConfig
from worldloop.serving.engine import SessionNotFound, Streams, block_actions
from worldloop.serving.frames import ImageError, decode_base64_image, encode_frame, fit
from worldloop.serving.protocol import StepMessage
from worldloop.serving.sessions import ApiError, ApiKeys, key_id


def test_sequence_parallel_replicas_pack_their_devices_on_one_node() -> None:
    opts = ServeOptions(model="preset:tiny", sp=4, device="cuda")
    options = deployment_options(opts)
    assert options["placement_group_strategy"] == "STRICT_PACK"
    bundles = options["placement_group_bundles"]
    assert len(bundles) == 5 and "GPU" not in bundles[0]  # bundle 0: the replica itself
    assert all(b == {"CPU": 1.0, "GPU": 1.0} for b in bundles[1:])
    assert options["ray_actor_options"]["num_cpus"] <= bundles[0]["CPU"]
    single = deployment_options(ServeOptions(model="preset:tiny", device="cuda"))
    assert "placement_group_bundles" not in single and single["ray_actor_options"]["num_gpus"] == 1.0
    scaled = deployment_options(ServeOptions(model="preset:tiny", replicas=1, max_replicas=3))
    assert scaled["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in scaled


def test_build_app_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="sp"):
        build_app({"model": "preset:tiny", "sp": "zero"})
    with pytest.raises(ValueError, match="colour"):
        build_app({"model": "preset:tiny", "colour": "red"})
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        build_app({"model": "models:/worldloop"})
    build_app({"model": "preset:tiny", "sp": "2", "fp8": "false"})  # serve config args arrive as strings
    opts = ServeOptions.parse({"model": "models:/worldloop@champion", "sp": "2", "replicas": "3"})
    assert ServeOptions.parse(opts) is opts  # validated once; typed options pass through
    engine = opts.engine  # what the generator receives: the parsed URI, not its text
    assert type(engine) is EngineConfig and engine.sp == 2 and "replicas" not in engine.model_dump()
    assert (engine.model.name, engine.model.alias) == ("worldloop", "champion")


def test_api_keys() -> None:
    open_access = ApiKeys(None)
    assert open_access.owner(None) == "anonymous"
    keys = ApiKeys([SecretStr("k" * 20)])
    assert keys.owner("k" * 20) == key_id("k" * 20) != "k" * 20
    for bad in (None, "", "x" * 20):
        with pytest.raises(ApiError) as err:
            keys.owner(bad)
        assert err.value.status == 401


def test_settings_refuse_short_api_keys() -> None:
    from worldloop.settings import Settings

    with pytest.raises(ValidationError, match="16 characters"):
        Settings(serve_api_keys=["short"])
    assert Settings(serve_api_keys="a" * 16 + "," + "b" * 16).serve_api_keys is not None


def test_images_decode_fit_and_encode() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    png = encode_frame(image, "png")
    assert np.array_equal(decode_base64_image(base64.b64encode(png).decode()), image)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_base64_image(data_url).shape == (30, 50, 3)
    assert fit(image, 64, 64).shape == (64, 64, 3)
    assert fit(image, 30, 50) is image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="GIF")
    for bad, reason in (
        (base64.b64encode(buf.getvalue()).decode(), "not accepted"),
        (base64.b64encode(b"\x89PNG broken").decode(), "could not be decoded"),
        ("@@@", "base64"),
        ("data:image/png,abc", "base64"),
    ):
        with pytest.raises(ImageError, match=reason):
            decode_base64_image(bad)
    for fmt in ("jpeg", "webp"):
        assert len(encode_frame(image, fmt, 80)) > 0


def test_step_message_validation() -> None:
    StepMessage(type="step", keys=["w", "space"], mouse=(3.0, -1.0))
    for bad in (
        {"keys": ["q"]},
        {"blocks": 0},
        {"mouse": (float("nan"), 0.0)},
        {"text": ""},
        {"extra": 1},
    ):
        with pytest.raises(ValidationError):
            StepMessage.model_validate({"type": "step", **bad})


def test_block_actions_spread_the_mouse_over_the_frames() -> None:
    actions = block_actions(["w"], (8.0, -4.0), 4)
    assert len(actions) == 4 and all(a.label() == "w" for a in actions)
    assert sum(a.mouse_dx for a in actions) == pytest.approx(8.0)
    assert actions[0].mouse_dy == pytest.approx(-1.0)


def test_streams_run_sessions_independently() -> None:
    streams = Streams(EngineConfig(model="preset:tiny", device="cpu"))
    image = np.full((64, 64, 3), 120, np.uint8)
    start = streams.start("a", image=image, prompt="a room", seed=1)
    assert start.frames.shape == (1, 64, 64, 3) and start.first_index == 0
    streams.start("b", image=image, prompt="a room", seed=1, frame_index=40, blocks=5)  # a resume
    a = streams.step("a", keys=["w"])
    b = streams.step("b", keys=["w"], text="make it snow")
    assert (a.block, a.first_index) == (1, 1)
    assert (b.block, b.first_index, b.recached) == (6, 41, True)
    assert streams.recaches("b") == 1 and streams.recaches("a") == 0
    assert streams.close("a") and not streams.close("a")
    with pytest.raises(SessionNotFound):
        streams.step("a")


def test_streams_sample_with_the_checkpoints_spec(tmp_path: Path) -> None:
    """Size, fps and the sampling schedule come from the checkpoint's spec.json, not serving defaults."""
    from serving_fixtures import write_responsive_checkpoint

    from worldloop.model.spec import SamplingSchedule, read_spec, write_spec

    folder = write_responsive_checkpoint(tmp_path)
    spec = read_spec(folder).with_schedule(SamplingSchedule(timesteps=(1000.0, 500.0)))
    write_spec(folder, spec.model_copy(update={"fps": 8.0}))
    streams = Streams(EngineConfig(model=str(folder), device="cpu"))
    assert streams.rollout.timesteps == [1000.0, 500.0]
    info = streams.info()
    assert (info.height, info.width, info.fps, info.uri) == (64, 64, 8.0, str(folder))
    resized = Streams(EngineConfig(model=str(folder), device="cpu", height=32, width=48))
    assert (resized.rollout.height, resized.rollout.width) == (32, 48)
