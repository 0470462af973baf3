"""The ``worldloop`` command. ``run`` is the console entry point: usage and input errors print one
line (``worldloop: error: ...``) and exit 2, never a traceback."""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError

from worldloop import __version__
from worldloop.cli.curate import curate
from worldloop.cli.demo import demo
from worldloop.cli.evaluate import evaluate
from worldloop.cli.infra import infra
from worldloop.cli.models import models
from worldloop.cli.pipeline import pipeline
from worldloop.cli.serve import play, serve
from worldloop.cli.synth import synth
from worldloop.cli.train import train

app = typer.Typer(
    name="worldloop",
    help="Build, evaluate and serve instruction-driven interactive game world models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"worldloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


app.command(help="Render SynthWorld clips: labelled (MP4 + JSON ground truth) or --raw text-video pairs.")(
    synth
)
app.command(help="Curate raw text-video pairs into an interactive dataset (Ray Data; resumable).")(curate)
app.command(help="Run a training stage (action | sft | distill | extend); resumable; tracked in MLflow.")(
    train
)
app.command(help="Run the local demo end to end and print where its outputs went.")(demo)
app.add_typer(evaluate, name="eval")
app.add_typer(models, name="models")
app.add_typer(pipeline, name="pipeline")
app.add_typer(serve, name="serve")
app.command(help="Print (or --open) the play page of a running server.")(play)
app.add_typer(infra, name="infra")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()]
        return "invalid input: " + "; ".join(parts)
    return str(exc).strip().replace("\n", " ")


def run(argv: list[str] | None = None) -> int:
    """Console entry point: returns the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=argv if argv is not None else sys.argv[1:], prog_name="worldloop", standalone_mode=False
        )
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        print("worldloop: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as err:  # usage errors: unknown option, bad value, missing argument
        print(f"worldloop: error: {err.format_message()} (see 'worldloop --help')", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"worldloop: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":  # python -m worldloop.cli.main (torchrun -m uses this)
    main()
