"""``worldloop infra``: render the kustomize overlays, validate manifests offline, apply, report status.

``render`` and ``validate`` need no cluster (CI runs them for both overlays). ``apply`` renders and
validates first and refuses invalid manifests; it and ``status`` talk to the cluster through
``worldloop.k8s.apply`` / ``worldloop.k8s.status``, imported when the command runs so the offline
commands never load a Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from worldloop.k8s.render import RenderOptions, render, write_rendered
from worldloop.k8s.validate import count_documents, validate_dir, validate_objects

infra = typer.Typer(help="Render, validate and apply the Kubernetes manifests.", no_args_is_help=True)

_OVERLAY_HELP = "Overlay: dev, prod (infra/k8s/overlays/NAME) or a kustomization folder."


def _options(
    image_tag: str | None,
    registry: str | None,
    sp: int | None,
    gpus_per_worker: int | None,
    min_workers: int | None,
    max_workers: int | None,
    model: str | None,
    fp8: bool | None,
) -> RenderOptions:
    return RenderOptions(
        image_tag=image_tag,
        image_registry=registry,
        sp=sp,
        gpus_per_worker=gpus_per_worker,
        worker_replicas_min=min_workers,
        worker_replicas_max=max_workers,
        model_uri=model,
        fp8=fp8,
    )


_TAG = typer.Option(None, "--image-tag", help="Tag of the worldloop images (default: the overlay's).")
_REGISTRY = typer.Option(None, "--registry", help="Registry/prefix of the worldloop images.")
_SP = typer.Option(None, "--sp", help="Sequence-parallel degree per generator replica.")
_GPUS = typer.Option(None, "--gpus-per-worker", help="GPUs per Ray worker pod (default: --sp).")
_MIN = typer.Option(None, "--min-workers", help="Fewest GPU worker pods.")
_MAX = typer.Option(None, "--max-workers", help="Most GPU worker pods (autoscaling).")
_MODEL = typer.Option(None, "--model", help="Model URI the service loads (models:/NAME@ALIAS).")
_FP8 = typer.Option(None, "--fp8/--no-fp8", help="FP8 weights in the generator (default: the overlay's).")


@infra.command("render", help="Render an overlay (plus overrides): one YAML file per object, or all.yaml.")
def infra_render(
    overlay: str = typer.Option("dev", "--overlay", help=_OVERLAY_HELP),
    out: Path = typer.Option(..., "--out", help="Folder to write (its *.yaml files are replaced)."),
    image_tag: str | None = _TAG,
    registry: str | None = _REGISTRY,
    sp: int | None = _SP,
    gpus_per_worker: int | None = _GPUS,
    min_workers: int | None = _MIN,
    max_workers: int | None = _MAX,
    model: str | None = _MODEL,
    fp8: bool | None = _FP8,
    single_file: bool = typer.Option(
        False, "--single-file", help="Write one all.yaml instead of one file per object (never both)."
    ),
) -> None:
    options = _options(image_tag, registry, sp, gpus_per_worker, min_workers, max_workers, model, fp8)
    objects = render(overlay, options)
    written = write_rendered(objects, out, single_file=single_file)
    layout = written[0].name if single_file else "one file each"
    typer.echo(f"rendered {len(objects)} objects of overlay {overlay} to {out}/ ({layout})")


@infra.command("validate", help="Validate manifests offline (K8s schemas, KubeRay CRDs, project rules).")
def infra_validate(
    path: Path = typer.Argument(
        ..., help="A rendered folder (worldloop infra render --out) or a YAML file; every YAML is checked."
    ),
) -> None:
    problems = validate_dir(path)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.echo(f"{len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{count_documents(path)} documents valid")


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@infra.command("apply", help="Render, validate and server-side apply an overlay to the cluster.")
def infra_apply(
    overlay: str = typer.Option("prod", "--overlay", help=_OVERLAY_HELP),
    context: str | None = typer.Option(None, "--context", help="kubeconfig context (default: current)."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="kubeconfig file (default: ~/.kube)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: show what would change."),
    image_tag: str | None = _TAG,
    registry: str | None = _REGISTRY,
    sp: int | None = _SP,
    gpus_per_worker: int | None = _GPUS,
    min_workers: int | None = _MIN,
    max_workers: int | None = _MAX,
    model: str | None = _MODEL,
    fp8: bool | None = _FP8,
) -> None:
    options = _options(image_tag, registry, sp, gpus_per_worker, min_workers, max_workers, model, fp8)
    objects = render(overlay, options)
    problems = validate_objects(objects, file=f"overlay {overlay}")
    if problems:
        for problem in problems:
            typer.echo(str(problem), err=True)
        typer.echo(f"worldloop: {len(problems)} problem(s); nothing applied", err=True)
        raise typer.Exit(1)
    from worldloop.k8s.apply import ApplyError, apply_objects
    from worldloop.k8s.client import KubeError

    try:
        results = apply_objects(objects, context=context, kubeconfig=kubeconfig, dry_run=dry_run)
    except ApplyError as err:  # names the object, the HTTP status and (422) the fields
        if err.applied:
            typer.echo(f"applied before the failure ({len(err.applied)}):", err=True)
            _table([(r.kind, r.namespace or "-", r.name, r.action) for r in err.applied], _APPLY_COLUMNS)
        typer.echo(f"worldloop: apply failed: {err}", err=True)
        raise typer.Exit(1) from None
    except KubeError as err:  # no kubeconfig, server unreachable
        typer.echo(f"worldloop: apply failed: {err}", err=True)
        raise typer.Exit(1) from None
    _table([(r.kind, r.namespace or "-", r.name, r.action) for r in results], _APPLY_COLUMNS)
    for result in results:
        for line in result.diff:
            typer.echo(f"  {result.kind}/{result.name}: {line}")
    typer.echo(f"{len(results)} objects {'checked (dry run)' if dry_run else 'applied'}")


_APPLY_COLUMNS = ("KIND", "NAMESPACE", "NAME", "ACTION")


@infra.command("status", help="Readiness of the platform's components in the cluster (exit 1 if any is not).")
def infra_status(
    namespace: str = typer.Option("worldloop", "--namespace", "-n", help="Namespace of the platform."),
    context: str | None = typer.Option(None, "--context", help="kubeconfig context (default: current)."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="kubeconfig file (default: ~/.kube)."),
) -> None:
    from worldloop.k8s.client import KubeError
    from worldloop.k8s.status import cluster_status

    try:
        components = cluster_status(namespace, context=context, kubeconfig=kubeconfig)
    except KubeError as err:
        typer.echo(f"worldloop: status failed: {err}", err=True)
        raise typer.Exit(1) from None
    rows = [(c.kind, c.name, "yes" if c.ready else "NO", c.detail) for c in components]
    _table(rows, ("KIND", "NAME", "READY", "DETAIL"))
    not_ready = [c for c in components if not c.ready]
    if not_ready:
        typer.echo(f"{len(not_ready)} of {len(components)} components not ready", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(components)} components ready")
