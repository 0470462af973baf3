"""``worldloop serve run`` (the Ray Serve app) and ``worldloop play URL`` (the browser page)."""

from __future__ import annotations

import webbrowser
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
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the DiT blocks."),
    height: int = typer.Option(None, "--height", help="Frame height (default: the model's trained size)."),
    width: int = typer.Option(None, "--width", help="Frame width (default: the model's trained size)."),
    replicas: int = typer.Option(1, "--replicas", help="Generator replicas (minimum when autoscaling)."),
    max_replicas: int = typer.Option(None, "--max-replicas", help="Autoscale generator replicas up to this."),
) -> None:
    import ray
    from ray import serve as ray_serve

    from worldloop.serving.app import ServeOptions, build_app
    from worldloop.settings import get_settings

    args = {
        "model": model,
        "sp": devices,
        "device": device,
        "fp8": fp8,
        "attention": attention,
        "compile": compile_,
        "height": height,
        "width": width,
        "replicas": replicas,
        "max_replicas": max_replicas,
    }
    opts = ServeOptions.parse({k: v for k, v in args.items() if v is not None})  # before Ray starts
    app = build_app(opts)
    settings = get_settings()
    url = f"http://{host}:{port}/"
    try:  # Ctrl-C while starting stops too (KeyboardInterrupt), and cleans up what started
        ray.init(address=settings.ray_address, include_dashboard=False)
        ray_serve.start(http_options={"host": host, "port": port})
        typer.echo(f"worldloop: starting {opts.model} on {opts.sp} device(s) per replica ...", err=True)
        ray_serve.run(app, name="worldloop", route_prefix="/", blocking=False)
        typer.echo(f"worldloop: serving at {url}  (play page {url} · API docs {url}docs · KServe v2 {url}v2)")
        typer.echo(f"worldloop: play with `worldloop play {url}`; Ctrl-C stops", err=True)
        signalled = wait_for_stop_signal()
        typer.echo(f"worldloop: {signalled}: stopping Serve and Ray ...", err=True)
    except KeyboardInterrupt:
        typer.echo("worldloop: interrupted while starting: stopping Serve and Ray ...", err=True)
    finally:
        stop_serving(ray, ray_serve)
    typer.echo("worldloop: stopped", err=True)


SHUTDOWN_TIMEOUT_S = 6.0  # Serve's own shutdown gets this long; then the local Ray goes down regardless


def wait_for_stop_signal() -> str:
    """Block until SIGINT or SIGTERM (a Ctrl-C, ``kill``, the kubelet) and return its name; the previous
    handlers come back afterwards. Ray's own handlers in this driver are replaced meanwhile, so
    neither signal is swallowed."""
    import signal
    import threading

    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return received[0]


def stop_serving(ray: Any, ray_serve: Any) -> None:
    """Serve's shutdown (its proxy frees the port) within :data:`SHUTDOWN_TIMEOUT_S`, then the local Ray
    this command started (its processes end; a cluster given by address is only disconnected)."""
    import threading

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
