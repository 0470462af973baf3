"""The quality ladder (``worldloop eval quality``): its measures separate the truth from the frozen first
frame and from random weights, the direction check passes on SynthWorld's own W-vs-S (A-vs-D, mouse)
clips and fails on a frozen video, and the command writes every file and number (and refuses a bad
``--model`` in one line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worldloop.cli.main import run
from worldloop.components.evaluation import interbench
from worldloop.components.evaluation.quality import HELD_OUT_SEED, PSNR_CAP, metric_keys
from worldloop.components.evaluation.quality.contestants import FrozenContestant, TruthContestant
from worldloop.components.evaluation.quality.generate import (
    Sampler,
    choose_sampler,
    clip_inputs,
    plane_video,
    random_weight_stack,
    teacher_video,
)
from worldloop.components.evaluation.quality.heldout import DIRECTION_PAIRS, HeldOutSet, held_out_set
from worldloop.components.evaluation.quality.measures import ContestantScores, block_slices, measure
from worldloop.components.evaluation.quality.run import CONTESTANTS, build_contestants, quality_suite
from worldloop.model.camera import parse_action
from worldloop.model.spec import ModelSpec, SamplingSchedule, build_modules, preset_spec, write_spec
from worldloop.platform import stack as stack_module
from worldloop.platform.stack import load_model_stack
from worldloop.settings import Settings, get_settings

CLIPS, BLOCKS = 2, 1
TIMESTEPS = (1000.0, 750.0, 500.0, 250.0)  # the checkpoint's own schedule (not the default list)


def _checkpoint(root: Path, spec: ModelSpec, *, stage: str) -> Path:
    """A tiny checkpoint as training writes one: weights, VAE, spec and state (seeded random weights)."""
    folder = root / "step-00000001"
    folder.mkdir(parents=True)
    model, vae = build_modules(spec, seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "vae.safetensors"))
    write_spec(folder, spec)
    config = {"stage": stage, "model_preset": "tiny", "seed": 0, "height": 64, "width": 64}
    (folder / "state.json").write_text(json.dumps({"step": 1, "config": config}))
    (root / "latest").write_text(folder.name + "\n")
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny model's small convs gain nothing from a second one, and on a shared
    2-core machine two threads per process oversubscribe the cores (measured 5x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return preset_spec("tiny", height=64, width=64).with_schedule(SamplingSchedule(timesteps=TIMESTEPS))


@pytest.fixture(scope="module")
def held(spec: ModelSpec) -> HeldOutSet:
    return held_out_set(spec, clips=CLIPS, blocks=BLOCKS)


@pytest.fixture(scope="module")
def truth(held: HeldOutSet) -> ContestantScores:
    """A "model" whose output is the truth (SynthWorld's render of the same start and actions)."""
    return measure(TruthContestant(), held, fov_deg=held.cfg.fov_deg, seed=0)


@pytest.fixture(scope="module")
def frozen(held: HeldOutSet) -> ContestantScores:
    return measure(FrozenContestant(), held, fov_deg=held.cfg.fov_deg, seed=0)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, spec: ModelSpec) -> Iterator[tuple[Path, Path, int, str]]:
    """``worldloop eval quality`` on a stage-3 checkpoint: 2 clips, 1 block, 1 InterBench case, tracked."""
    root = tmp_path_factory.mktemp("quality")
    ckpt = _checkpoint(root / "ckpt", spec, stage="distill")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLDLOOP_HOME", str(root / "home"))
        get_settings.cache_clear()
        args = ["eval", "quality", "--model", str(root / "ckpt"), "--out", str(out)]
        code = run([*args, "--clips", str(CLIPS), "--blocks", str(BLOCKS), "--cases", "1"])
        get_settings.cache_clear()
    yield root, out, code, str(ckpt)


def test_held_out_seed_is_separate() -> None:
    assert HELD_OUT_SEED != interbench.HELD_OUT_SEED and HELD_OUT_SEED not in range(8)  # judge / training
    assert HELD_OUT_SEED * 1_000_003 + 99 < 2**32  # suite case seeds stay 32-bit


def test_blocks_cover_every_frame_once(spec: ModelSpec) -> None:
    held = held_out_set(spec, clips=1, blocks=3)
    frames = [i for s in block_slices(held) for i in range(held.frames)[s]]
    assert frames == list(range(held.frames)) and held.frames == 1 + 3 * 8
    assert (
        held.clips[0].frames.shape == (held.frames, 64, 64, 3) and len(held.clips[0].actions) == held.frames
    )


def test_frozen_first_frame_is_exact_at_frame_0_and_wrong_after(frozen: ContestantScores) -> None:
    m = frozen.metrics
    assert m["rollout.psnr.block0"] == PSNR_CAP and m["rollout.ssim.block0"] == pytest.approx(1.0)
    assert m["rollout.psnr.block1"] is not None and m["rollout.psnr.block1"] < 40.0  # the camera moved
    assert m["vae.psnr"] is None and m["vae.ssim"] is None  # no VAE: n/a
    assert m["camera.translation_missed"] == 1.0 and m["camera.translation_deg"] is None  # never moves


def test_direction_check_passes_on_the_truth_and_fails_on_a_frozen_video(
    truth: ContestantScores, frozen: ContestantScores
) -> None:
    for pair in DIRECTION_PAIRS:
        assert truth.metrics[f"direction.{pair.name}"] == 1.0, truth.clips
        assert frozen.metrics[f"direction.{pair.name}"] == 0.0
        for row in truth.clips:  # signs, not just the verdict: W forward, A left, mouse left turns left
            first, second = row["direction"][pair.name]["values"]
            assert pair.sign * first > 0 > pair.sign * second
    assert truth.metrics["direction.all"] == 1.0 and frozen.metrics["direction.all"] == 0.0


def test_truth_outscores_random_weights_and_the_frozen_frame(
    cli: tuple[Path, Path, int, str], truth: ContestantScores, frozen: ContestantScores
) -> None:
    _, out, code, _ = cli
    assert code == 0
    random = json.loads((out / "quality.json").read_text())["contestants"]["random"]["metrics"]
    t: dict[str, Any] = truth.metrics
    frozen_psnr = frozen.metrics["rollout.psnr.block1"]
    assert frozen_psnr is not None  # random weights do worse than repeating the first frame
    assert t["rollout.psnr.block1"] == PSNR_CAP > frozen_psnr > random["rollout.psnr.block1"]
    assert t["rollout.ssim.block1"] == pytest.approx(1.0) and random["rollout.ssim.block1"] < 0.9
    assert t["direction.all"] > random["direction.all"]
    assert t["camera.translation_missed"] < random["camera.translation_missed"]


def test_cli_writes_every_number_and_file(
    cli: tuple[Path, Path, int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out, code, ckpt = cli
    assert code == 0
    payload: dict[str, Any] = json.loads((out / "quality.json").read_text())
    keys = metric_keys(BLOCKS)
    # tiny's I2V channels carry the warped still latent: its decoded input is measured beside the model
    assert payload["metric_keys"] == keys and set(payload["contestants"]) == {*CONTESTANTS, "plane"}
    for name, contestant in payload["contestants"].items():
        assert set(contestant["metrics"]) == set(keys), name
    model = payload["contestants"]["model"]["metrics"]
    # every number is measured; a translation direction only where the estimate moved at all
    assert all(model[k] is not None for k in keys if k != "camera.translation_deg"), model
    assert (
        payload["model"] == str(root / "ckpt")
        and payload["checkpoint"] == ckpt
        and payload["version"] is None
    )
    assert payload["stage"] == "distill" and payload["sampler"]["kind"] == "rollout"
    assert payload["sampler"]["timesteps"] == list(TIMESTEPS)  # the spec's schedule, not the default
    assert payload["spec"]["preset"] == "tiny" and payload["spec"]["timesteps"] == list(TIMESTEPS)
    held = payload["held_out"]
    assert (held["seed"], held["clips"], held["blocks"], held["frames"]) == (HELD_OUT_SEED, CLIPS, BLOCKS, 9)
    assert held["interbench_cases"] == 1 and payload["files"]["plot"] == "block_psnr.png"
    assert (out / "block_psnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["files"]["samples"] == ["samples/clip_00.mp4", "samples/clip_01.mp4"]
    from worldloop.video import decode_video

    frames, _ = decode_video(out / "samples" / "clip_00.mp4")
    assert frames.shape == (9, 64, 3 * 64 + 2 * 2, 3)  # truth | model | random
    mlflow.set_tracking_uri(f"sqlite:///{root / 'home' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["worldloop-evaluation"], output_format="list")
    assert [r.info.run_name for r in runs] == ["quality"]
    assert runs[0].data.metrics["frozen.rollout.psnr.block0"] == PSNR_CAP
    assert runs[0].data.params["held_out_seed"] == str(HELD_OUT_SEED)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("preset:huge", "unknown model preset"),
        ("models:/worldloop", "models:/NAME@ALIAS"),
        ("/no/such/ckpt", "no such"),
    ],
)
def test_bad_model_is_one_line_and_exit_2(
    model: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["eval", "quality", "--model", model, "--out", str(tmp_path / "out"), "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("worldloop: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "quality.json").exists()


def test_teacher_checkpoints_get_the_whole_clip_sampler(
    tmp_path: Path, spec: ModelSpec, held: HeldOutSet
) -> None:
    _checkpoint(tmp_path / "sft", spec, stage="instruction")
    stack = load_model_stack(str(tmp_path / "sft"))
    assert stack.stage == "instruction" and choose_sampler(stack) is Sampler.teacher
    assert choose_sampler(stack, "rollout") is Sampler.rollout
    with pytest.raises(ValueError, match="--sampler must be"):
        choose_sampler(stack, "euler")
    clip = held.clips[0]
    args: dict[str, Any] = {"prompt": clip.prompt, "fov_deg": held.cfg.fov_deg, "steps": 2}
    video = teacher_video(stack, clip.frames[0], clip.actions, seed=3, **args)
    assert video.shape == clip.frames.shape and video.dtype == np.uint8
    assert np.array_equal(video, teacher_video(stack, clip.frames[0], clip.actions, seed=3, **args))
    random = random_weight_stack(stack, seed=0)
    assert random.spec == stack.spec and not random.trained
    assert not torch.equal(next(random.model.parameters()), next(stack.model.parameters()))


def test_interbench_streams_with_the_checkpoint_timesteps(
    tmp_path: Path, spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = load_model_stack(str(_checkpoint(tmp_path / "ckpt", spec, stage="distill")))
    settings = Settings(home=tmp_path / "home")
    suite = quality_suite(settings, size=64, frames=9, cases=1)
    seen: list[list[float]] = []

    class Spy(stack_module.Rollout):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(list(kwargs["timesteps"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(stack_module, "Rollout", Spy)
    video = interbench.generate_case(stack, suite, suite.cases[0])
    assert seen == [list(TIMESTEPS)] and video.shape == (9, 64, 64, 3)


def test_the_plane_baseline_is_the_models_i2v_input_decoded(
    cli: tuple[Path, Path, int, str], held: HeldOutSet
) -> None:
    """Frame 0 is the VAE's reconstruction of the image; a still camera gives the decoded still latent at
    every later frame; a turn moves it; a model without the still latent has no such baseline."""
    root, _, _, _ = cli
    stack = load_model_stack(str(root / "ckpt"))
    image, fov = held.clips[0].frames[0], held.cfg.fov_deg
    still = [parse_action("none")] * held.frames
    turn = [parse_action("none")] + [parse_action("none", mouse_dx=4.0)] * (held.frames - 1)
    video, turned = (
        plane_video(stack, image, still, fov_deg=fov),
        plane_video(stack, image, turn, fov_deg=fov),
    )
    with torch.no_grad():
        reference, _, cond = clip_inputs(stack, image, still, fov_deg=fov)
        stride = stack.model.cfg.vae.temporal_stride
        held_still = cond[:, stride:].clone()
        expected = stack.vae.decode(held_still)[0]
    rgb = ((expected.clamp(-1, 1).permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.abs(video[1:].astype(int) - rgb[1:].astype(int)).max() <= 2  # the plane of a still camera
    np.testing.assert_array_equal(video[0], turned[0])
    assert np.abs(video[1:].astype(int) - turned[1:].astype(int)).mean() > 1.0
    names = build_contestants(stack, Sampler.rollout, fov_deg=fov, teacher_steps=2, seed=0)
    assert list(names) == ["model", "random", "frozen", "plane", "truth"]
    flat = stack.spec.model.model_copy(update={"i2v_warp": None, "i2v_warp_pixels": False})
    stack.model.cfg = flat
    assert "still" in build_contestants(stack, Sampler.rollout, fov_deg=fov, teacher_steps=2, seed=0)
    stack.model.cfg = flat.model_copy(update={"i2v_still": False})
    with pytest.raises(ValueError, match="still latent"):
        plane_video(stack, image, still, fov_deg=fov)
