"""Subcommands whose engines are built by later issues. Their ``--help`` documents the interface
now; running one says which issue delivers it and exits with status 3."""

from __future__ import annotations

import typer


def _later(what: str, issue: int) -> None:
    typer.echo(f"worldloop: {what} is not available in this version (delivered by issue #{issue}).", err=True)
    raise typer.Exit(3)


infra = typer.Typer(help="Render, validate and apply the Kubernetes manifests.", no_args_is_help=True)


@infra.command("render", help="Render kustomize manifests from settings.")
def infra_render(
    overlay: str = typer.Option("dev", "--overlay"), out: str = typer.Option(..., "--out")
) -> None:
    _later("infra", 9)


@infra.command("validate", help="Validate rendered manifests offline (kubernetes-validate + KubeRay CRDs).")
def infra_validate(path: str = typer.Argument(...)) -> None:
    _later("infra", 9)


SUBCOMMANDS = {
    "infra": infra,
}
