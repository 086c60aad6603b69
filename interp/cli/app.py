"""The `interp` command line. It parses arguments, calls one library function, prints and draws bars.

This module routes: it sets up logging, quiets the libraries and registers the commands, which live one module
per group (data, models, extract and cache, probe, lens, erase, behave/stats/serve, demo/study). A user mistake
(an `InterpError`) is one line on stderr and exit status 2; anything else is a bug and shows its traceback.
Heavy libraries are imported inside the commands so that `--help` answers at once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Optional

import typer

from interp.cli import behave, compare_text, data, erase, extract, lens, models, probe, study
from interp.errors import InterpError

__all__ = ["app", "main"]

app = typer.Typer(help=__doc__.splitlines()[0] + "\n\nDoes an end-to-end speech LLM use the audio, or is it an "
                  "ASR -> LLM cascade in disguise?", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, rich_markup_mode=None)
for name, command in (("transcribe", models.transcribe_set), ("extract", extract.extract_command),
                      ("probe", probe.probe_command), ("lens", lens.lens_command), ("ask", models.ask),
                      ("compare-text", compare_text.compare_text_command)):
    app.command(name)(command)
app.command("behave", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(behave.behave)
for name, command in (("stats", behave.stats_command), ("demo", study.demo_command), ("study", study.study_command),
                      ("serve", behave.serve_command)):
    app.command(name)(command)
for group, name in ((data.app, "data"), (models.app, "models"), (erase.app, "erase"), (extract.cache_app, "cache")):
    app.add_typer(group, name=name)


@app.callback()
def _setup(log_level: str = typer.Option("WARNING", help="Logging level: DEBUG, INFO, WARNING, ERROR."),
           threads: Optional[int] = typer.Option(None, min=1, help="Torch threads for any command (default: "
                                                 "torch's, one per core); `probe` and `demo` set their own.")) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        _quiet_libraries()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _quiet_libraries() -> None:
    """Silence what the libraries print on their own: transformers' `Loading weights` and `Writing model shards`
    bars and its warnings, the GGUF conversion's bar (a plain tqdm) and Python's deprecation warnings. Our own bars
    pass `disable=` explicitly, so TQDM_DISABLE (a default tqdm reads when it is imported, before any command
    runs) does not reach them. A variable the user set wins; `--log-level DEBUG` leaves everything on."""
    import os
    import warnings

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.simplefilter("ignore")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (argv: the arguments, default sys.argv[1:]): user mistakes become one line on stderr
    and exit status 2."""
    try:
        app(args=None if argv is None else list(argv))
    except InterpError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted (rerun the same command to resume)", err=True)
        sys.exit(130)
