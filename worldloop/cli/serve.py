"""``worldloop serve run`` (the Ray Serve app) and ``worldloop play URL`` (the browser page)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import webbrowser
from collections.abc import Iterator
from typing import Any

import typer

serve = typer.Typer(help="Ray Serve: real-time sessions, KServe v2, web play page.", no_args_is_help=True)


@serve.command("run", help="Start the Ray Serve app (REST, WebSocket play, KServe v2, web page); blocks.")
def serve_run(
    model: str = typer.Option(
        "models:/worldloop@champion", "--model", help="preset:NAME, a checkpoint folder/URI or models:/..."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the HTTP proxy listens on."),
    port: int = typer.Option(8000, "--port"),
    devices: int = typer.Option(
        1, "--devices", "--sp", help="Devices per replica = sequence-parallel workers (Ulysses)."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    fp8: bool = typer.Option(False, "--fp8", help="FP8 weights and activations (CUDA, sm_89+)."),
    attention: str = typer.Option("sdpa", "--attention", help="Self-attention kernel: sdpa | sage | auto."),
    compile_mode: str | None = typer.Option(
        None,
        "--compile-mode",
        help="torch.compile: off | blocks (each DiT block) | step (each block's whole denoising step, "
        "CUDA graphs on CUDA; one device per replica). Default off.",
    ),
    compile_: bool = typer.Option(False, "--compile", help="Same as --compile-mode blocks."),
    height: int = typer.Option(None, "--height", help="Frame height (default: the model's trained size)."),
    width: int = typer.Option(None, "--width", help="Frame width (default: the model's trained size)."),
    replicas: int = typer.Option(1, "--replicas", help="Generator replicas (minimum when autoscaling)."),
    max_replicas: int = typer.Option(None, "--max-replicas", help="Autoscale generator replicas up to this."),
) -> None:
    import ray
    from ray import serve as ray_serve

    from worldloop.serving.app import ServeOptions, build_app
    from worldloop.settings import get_settings

    if compile_ and compile_mode not in (None, "blocks"):
        raise typer.BadParameter(
            f"--compile means --compile-mode blocks, not {compile_mode}: give one of them"
        )
    args = {
        "model": model,
        "sp": devices,
        "device": device,
        "fp8": fp8,
        "attention": attention,
        "compile": compile_mode if compile_mode is not None else ("blocks" if compile_ else None),
        "height": height,
        "width": width,
        "replicas": replicas,
        "max_replicas": max_replicas,
    }
    opts = ServeOptions.parse({k: v for k, v in args.items() if v is not None})  # before Ray starts
    app = build_app(opts)
    settings = get_settings()
    url = f"http://{host}:{port}/"
    try:
        ray.init(address=settings.ray_address, include_dashboard=False)
        with stop_signals():  # from here on SIGINT and SIGTERM end the command, even while starting
            ray_serve.start(http_options={"host": host, "port": port})
            typer.echo(f"worldloop: starting {opts.model} on {opts.sp} device(s) per replica ...", err=True)
            ray_serve.run(app, name="worldloop", route_prefix="/", blocking=False)
            typer.echo(
                f"worldloop: serving at {url}  (play page {url} · API docs {url}docs · KServe v2 {url}v2)"
            )
            typer.echo(f"worldloop: play with `worldloop play {url}`; Ctrl-C stops", err=True)
            while True:
                time.sleep(3600)
    except StopSignal as stop:
        typer.echo(f"worldloop: {stop}: stopping Serve and Ray ...", err=True)
    except KeyboardInterrupt:  # before the handlers were in place
        typer.echo("worldloop: interrupted: stopping Serve and Ray ...", err=True)
    finally:
        stop_serving(ray, ray_serve)
    typer.echo("worldloop: stopped", err=True)


SHUTDOWN_TIMEOUT_S = 6.0  # Serve's own shutdown gets this long; then the local Ray goes down regardless


class StopSignal(Exception):
    """SIGINT or SIGTERM arrived (a Ctrl-C, ``kill``, the kubelet)."""


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`StopSignal` in the main thread — also while
    Serve is still starting — instead of reaching the handlers Ray installed in this driver (whose
    SIGTERM handler ends the process without shutting anything down). The previous handlers return
    afterwards."""

    def handler(signum: int, _frame: object) -> None:
        raise StopSignal(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_serving(ray: Any, ray_serve: Any) -> None:
    """Serve's shutdown (its proxy frees the port) within :data:`SHUTDOWN_TIMEOUT_S`, then the local Ray
    this command started (its processes end; a cluster given by address is only disconnected)."""
    if ray.is_initialized():
        done = threading.Thread(target=ray_serve.shutdown, daemon=True)
        done.start()
        done.join(SHUTDOWN_TIMEOUT_S)
        ray.shutdown()


def play(
    url: str = typer.Argument("http://127.0.0.1:8000/", help="Where the server runs."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
) -> None:
    """Print (or open) the play page of a running server, after checking it answers."""
    import httpx

    page = url.rstrip("/") + "/"
    try:
        response = httpx.get(page + "healthz", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise ValueError(f"{page} does not answer as a worldloop server ({err})") from None
    typer.echo(page)
    if open_browser:
        webbrowser.open(page)
