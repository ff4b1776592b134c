"""The `loopcli` command line."""

from __future__ import annotations

import sys

import click

from loopcli import __version__
from loopcli.runtime.errors import ModelError
from loopcli.tools.errors import ToolError

# Errors in the user's input: one line on stderr, exit code 2, no traceback.
USER_ERRORS = (ModelError, ToolError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loopcli")
def cli() -> None:
    """A local coding assistant for LoopCoder-V2 (parallel loop transformer) models."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
