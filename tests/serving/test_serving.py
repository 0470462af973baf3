"""The Ray Serve app end to end on the real engine (tiny model, CPU): sessions, play, KServe v2, errors.

Nothing of ours is replaced: requests go through Serve's HTTP proxy to the FastAPI ingress, the
generator deployment and the engine (Rollout, KV cache, VAE decode) — see conftest.py.
"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from worldloop.serving.client import Client, ServingError

pytestmark = pytest.mark.slow


def _png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _play(client: Client, session: str, steps: list[dict]) -> list[np.ndarray]:
    frames = []
    with client.play(session) as play:
        frames.append(play.frame)
        for step in steps:
            for block in play.step(**step):
                frames.extend(block.frames)
    return frames


def test_session_streams_frames_and_holding_w_changes_them(live_server) -> None:
    client = Client(live_server.url)
    ids = [client.create_session("a stone courtyard", seed=7, frame_format="png").id for _ in range(3)]
    info = client.get_session(ids[0])
    assert (info.width, info.height, info.frame_index, info.blocks) == (64, 64, 0, 0)
    per_block = info.frames_per_block

    with client.play(ids[0]) as play:
        assert play.hello is not None and not play.hello.resumed and play.hello.first_index == 0
        assert play.frame is not None and play.frame.shape == (64, 64, 3)
        blocks = play.step(blocks=2)
        assert [b.header.first_index for b in blocks] == [1, 1 + per_block]
        assert all(b.frames.shape == (per_block, 64, 64, 3) for b in blocks)
        timing = blocks[0].header.timing
        assert timing.generate_ms > 0 and timing.decode_ms > 0
        assert timing.total_ms >= timing.generate_ms + timing.decode_ms
        idle = np.concatenate([b.frames for b in blocks])
    walk = np.stack(_play(client, ids[1], [{"keys": ["w"]}, {"keys": ["w"]}])[1:])
    again = np.stack(_play(client, ids[2], [{}, {}])[1:])

    assert np.array_equal(idle, again), "same seed, image and inputs must give the same frames"
    change = np.abs(walk.astype(float) - idle.astype(float)).mean()
    assert change > 0.1, f"holding W did not change the frames (mean |diff| {change:.3f})"
    assert client.get_session(ids[0]).frame_index == 2 * per_block
    for session in ids:
        client.delete_session(session)
    assert not client.list_sessions()


def test_instruction_triggers_exactly_one_recache(live_server) -> None:
    client = Client(live_server.url)
    session = client.create_session("a wooden door in a wall", seed=1).id
    with client.play(session) as play:
        first = play.step()[0]
        issued = play.step(text="open the door")[0]
        same = play.step(text="open the door")[0]  # the same instruction again: nothing to recache
        later = play.step()[0]
    assert not first.header.recached
    assert issued.header.recached and issued.header.instruction == "open the door"
    assert not same.header.recached and not later.header.recached
    assert later.header.instruction == "open the door"
    info = client.get_session(session)
    assert info.recaches == 1 and info.instruction == "open the door"
    client.delete_session(session)


def test_tritonclient_infer_returns_the_engines_video(live_server, tiny_checkpoint) -> None:
    import tritonclient.http as triton

    from worldloop.serving.config import EngineConfig
    from worldloop.serving.engine import Streams
    from worldloop.serving.frames import sample_image

    url = httpx.URL(live_server.url)
    server = triton.InferenceServerClient(f"{url.host}:{url.port}")
    assert server.is_server_live() and server.is_server_ready() and server.is_model_ready("worldloop")
    meta = server.get_model_metadata("worldloop")
    assert {t["name"] for t in meta["outputs"]} == {"video"}

    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)  # fitted to 64×64
    tensors = {
        "prompt": (np.array([b"a courtyard"], dtype=object), "BYTES"),
        "actions": (np.array([b"w"] * 8 + [b"d"] * 8, dtype=object), "BYTES"),
        "image": (image, "UINT8"),
        "instruction": (np.array([b"make it snow"], dtype=object), "BYTES"),
        "instruction_frame": (np.array([9], dtype=np.int32), "INT32"),
        "seed": (np.array([5], dtype=np.int64), "INT64"),
    }
    inputs = []
    for name, (array, datatype) in tensors.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)  # default: binary tensor data
        inputs.append(tensor)
    video = server.infer("worldloop", inputs).as_numpy("video")
    assert video is not None and video.shape == (17, 64, 64, 3) and video.dtype == np.uint8

    # The same rollout run here, in this process, on the same checkpoint.
    streams = Streams(EngineConfig(model=str(tiny_checkpoint), device="cpu"))
    first = streams.start("local", image=image, prompt="a courtyard", seed=5)
    b1 = streams.step("local", keys=["w"])
    b2 = streams.step("local", keys=["d"], text="make it snow")
    assert b2.recached
    expected = np.concatenate([first.frames, b1.frames, b2.frames])
    # Not bit-equal: the replica runs torch with one thread, this process with several (float sums in
    # another order); a different rollout would differ by tens of levels.
    diff = np.abs(video.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.9, (diff.max(), (diff == 0).mean())
    assert not np.array_equal(video[0], sample_image(64, 64))


def test_a_recorded_trajectory_replays_frame_by_frame(live_server, tiny_checkpoint) -> None:
    """Per-frame actions that change inside a block (keys and mouse) are honoured by the KServe v2 model
    and the SDK's generate: the camera follows each frame, as the same per-frame rollout run here does."""
    from worldloop.model.camera import parse_action
    from worldloop.serving.config import EngineConfig
    from worldloop.serving.engine import Streams
    from worldloop.serving.frames import sample_image

    labels = ["w", "w", "w+a", "a", "none", "d", "d", "s"] * 2  # a new key set every frame or two
    mouse = np.stack([np.linspace(-2, 2, 16), np.zeros(16)], axis=1).astype(np.float32)
    client = Client(live_server.url)
    video = client.generate("a courtyard", labels, mouse=mouse, seed=3)
    assert video.shape == (17, 64, 64, 3)

    streams = Streams(EngineConfig(model=str(tiny_checkpoint), device="cpu"))
    first = streams.start("local", image=sample_image(64, 64), prompt="a courtyard", seed=3)
    pairs = zip(labels, mouse.tolist(), strict=True)
    actions = [parse_action(a, mouse_dx=x, mouse_dy=y) for a, (x, y) in pairs]
    blocks = [streams.step("local", actions=actions[i : i + 8]) for i in (0, 8)]
    expected = np.concatenate([first.frames, *(b.frames for b in blocks)])
    diff = np.abs(video.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.9, (diff.max(), (diff == 0).mean())
    held = Streams(EngineConfig(model=str(tiny_checkpoint), device="cpu"))
    held.start("held", image=sample_image(64, 64), prompt="a courtyard", seed=3)
    block_held = held.step("held", keys=["w"], mouse=(float(mouse[:8, 0].sum()), 0.0))
    assert not np.array_equal(block_held.frames, blocks[0].frames)  # frame by frame is not a block average


def test_sdk_generate_and_json_outputs(live_server) -> None:
    client = Client(live_server.url)
    video = client.generate("a courtyard", ["none"] * 3, seed=2)
    assert video.shape == (9, 64, 64, 3)  # 3 frames round up to one block of 8 (+ frame 0)


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=120, **kwargs)


def test_malformed_requests_get_4xx_json(live_server) -> None:
    base = live_server.url
    sessions = base + "v1/sessions"
    cases = {
        "bad JSON": _post(sessions, content=b"{prompt", headers={"content-type": "application/json"}),
        "missing prompt": _post(sessions, json={}),
        "blank prompt": _post(sessions, json={"prompt": "  "}),
        "unknown field": _post(sessions, json={"prompt": "x", "colour": "red"}),
        "not an image": _post(sessions, json={"prompt": "x", "image": base64.b64encode(b"hello").decode()}),
        "not base64": _post(sessions, json={"prompt": "x", "image": "%%%"}),
        "tiny image": _post(sessions, json={"prompt": "x", "image": _png(np.zeros((4, 4, 3), np.uint8))}),
        "bad format": _post(sessions, json={"prompt": "x", "frames": {"format": "gif"}}),
        "huge body": _post(
            sessions, content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"}
        ),
        "unknown session": httpx.get(sessions + "/s-nope"),
        "unknown route": httpx.get(base + "v1/nothing"),
        "infer without actions": _post(
            base + "v2/models/worldloop/infer",
            json={"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        ),
        "infer bad key": _post(
            base + "v2/models/worldloop/infer",
            json={
                "inputs": [
                    {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                    {"name": "actions", "datatype": "BYTES", "shape": [1], "data": ["jump"]},
                ]
            },
        ),
        "infer unknown model": _post(base + "v2/models/other/infer", json={"inputs": []}),
    }
    expected = {"huge body": 413, "unknown session": 404, "unknown route": 404, "infer unknown model": 404}
    for name, response in cases.items():
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.status_code == expected.get(name, 400), (name, response.status_code, response.text)
        assert "error" in response.json(), name
    assert "image" in cases["not an image"].json()["error"]["message"]
    assert "jump" in cases["infer bad key"].json()["error"]


def test_bad_play_messages_keep_the_socket_open(live_server) -> None:
    client = Client(live_server.url)
    session = client.create_session("a courtyard", seed=3).id
    url = client.socket_url(session)
    with connect(url) as ws:
        assert json.loads(ws.recv())["type"] == "hello"
        ws.recv()  # frame 0
        for bad in (
            "{not json",
            json.dumps({"type": "step", "keys": ["q"]}),
            json.dumps({"type": "step", "blocks": 99}),
            json.dumps({"type": "teleport"}),
            json.dumps({"type": "step", "text": " "}),
            json.dumps({"type": "step", "mouse": [1e9, 0]}),
            "x" * (70 * 1024),
        ):
            ws.send(bad)
            reply = json.loads(ws.recv())
            assert reply["type"] == "error" and reply["status"] in (400, 413), (bad[:40], reply)
        ws.send(b"\x00\x01")
        assert json.loads(ws.recv())["status"] == 400
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv())["type"] == "pong"
        ws.send(json.dumps({"type": "step", "keys": ["a"]}))
        header = json.loads(ws.recv())
        assert header["type"] == "block" and header["first_index"] == 1
    with pytest.raises(ServingError) as gone:
        client.play("s-unknown", reconnects=0)
    assert gone.value.status == 4404
    client.delete_session(session)


@pytest.fixture(scope="module")
def keyed_server(serve_cluster, tiny_checkpoint):
    settings = {
        "serve_api_keys": ["k" * 20, "other-key-0123456789"],
        "serve_sessions_per_key": 2,
        "serve_session_idle_s": 3.0,
        "serve_max_body_bytes": 64 * 1024,
    }
    server = serve_cluster.deploy("keyed", {"model": str(tiny_checkpoint)}, settings=settings)
    yield server
    serve_cluster.delete("keyed")


def test_api_keys_limits_and_idle_expiry(keyed_server) -> None:
    url = keyed_server.url
    assert httpx.post(url + "v1/sessions", json={"prompt": "x"}).status_code == 401
    assert httpx.get(url + "v1/sessions", headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
    assert httpx.get(url + "v2/health/ready").status_code == 200  # probes need no key
    assert httpx.get(url + "v2/models/worldloop").status_code == 401

    mine, theirs = Client(url, api_key="k" * 20), Client(url, api_key="other-key-0123456789")
    a = mine.create_session("a courtyard", seed=1)
    mine.create_session("a courtyard", seed=2)
    with pytest.raises(ServingError) as limited:
        mine.create_session("a courtyard", seed=3)
    assert limited.value.status == 429
    assert [s.id for s in theirs.list_sessions()] == []  # keys see only their own sessions
    with pytest.raises(ServingError) as hidden:
        theirs.get_session(a.id)
    assert hidden.value.status == 404
    with pytest.raises(ServingError) as denied:
        Client(url, api_key="wrong-key-0123456789").play(a.id, reconnects=0)
    assert denied.value.status == 4401
    body = {"prompt": "x", "image": "A" * (100 * 1024)}
    assert mine.http.post("v1/sessions", json=body).status_code == 413

    with mine.play(a.id) as play:  # the API key travels as ?api_key= on the socket
        assert play.step()[0].header.first_index == 1
    deadline = time.monotonic() + 30
    while mine.list_sessions() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not mine.list_sessions(), "idle sessions must expire"
    theirs.create_session("a courtyard")  # expiry freed the slots; the other key was never limited


def _generator_replica():
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
    named = [a for a in actors if a["name"].startswith("SERVE_REPLICA::resume#")]
    assert len(named) == 1, actors
    return ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])


def test_session_survives_generator_replica_loss(serve_cluster, tiny_checkpoint) -> None:
    import ray

    server = serve_cluster.deploy("resume", {"model": str(tiny_checkpoint)})
    try:
        client = Client(server.url)
        session = client.create_session("a courtyard", seed=4, frame_format="png").id
        with client.play(session) as play:
            before = play.step(keys=["w"])[0]
            last = before.frames[-1]
            ray.kill(_generator_replica(), no_restart=True)
            # The socket stays up: the ingress rebuilds the stream on the new replica from the last frame.
            after = play.step(keys=["w"])[0]
        assert after.header.first_index == before.last_index + 1
        assert client.get_session(session).resumes == 1

        ray.kill(_generator_replica(), no_restart=True)
        with client.play(session) as play:  # a new connection to the same id resumes too
            assert play.hello is not None and play.hello.resumed
            assert play.hello.first_index == after.last_index
            assert np.array_equal(play.frame, after.frames[-1])  # continues from its last frame
            again = play.step()[0]
        assert again.header.first_index == after.last_index + 1
        assert again.header.block == after.header.block + 1
        info = client.get_session(session)
        assert info.resumes == 2 and info.frame_index == again.last_index
        assert not np.array_equal(last, again.frames[-1])
    finally:
        serve_cluster.delete("resume")


def test_two_sequence_parallel_workers_equal_one(serve_cluster, live_server, tiny_checkpoint) -> None:
    """sp=2: two gloo workers in the replica's placement group; same video as the one-worker app."""
    server = serve_cluster.deploy("sp2", {"model": str(tiny_checkpoint), "sp": 2})
    try:
        actions = ["w"] * 8 + ["a"] * 8
        one = Client(live_server.url).generate("a courtyard", actions, seed=9, instruction="make it snow")
        two = Client(server.url).generate("a courtyard", actions, seed=9, instruction="make it snow")
        assert one.shape == two.shape == (17, 64, 64, 3)
        diff = np.abs(one.astype(int) - two.astype(int))
        assert diff.max() <= 1, f"sequence-parallel frames differ by up to {diff.max()} levels"
    finally:
        serve_cluster.delete("sp2")


def test_play_command_checks_the_server(live_server) -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("worldloop"))
    ok = subprocess.run([exe, "play", live_server.url], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == live_server.url
    down = subprocess.run([exe, "play", "http://127.0.0.1:9/"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 2 and "does not answer" in down.stderr and "Traceback" not in down.stderr
    help_text = subprocess.run([exe, "serve", "run", "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--devices" in help_text.stdout and "--fp8" in help_text.stdout
