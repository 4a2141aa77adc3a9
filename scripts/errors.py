"""The errors a workflow reports on one line, and the hook that prints them instead of a traceback.

Every error the bundle raises for a user's mistake (a bad input file, a weight file that does not fit,
a process environment torchrun did not set up, a NaN loss) derives from ``ReportedError``: its message
names the file or setting and says what to do, so a traceback would only hide it.
"""

from __future__ import annotations

import sys


class ReportedError(Exception):
    """An error whose message says everything on one line; workflows print it without a traceback."""


class InputError(ReportedError, ValueError):
    """A problem with an input file; its message names the file and the problem on one line."""


class ConfigError(ReportedError, ValueError):
    """A setting that cannot work; the message names the id, its value and the rule it breaks."""


def one_line(error: BaseException) -> str:
    """``Type: message`` of the innermost cause of ``error`` on one line (MONAI wraps transform errors in
    ``RuntimeError("applying transform ...")``, which names the transform but not the problem)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def running_as_command() -> bool:
    """True in a ``python -m monai.bundle ...`` process (also each torchrun worker), False where the configs are
    imported by another program (MONAI Label's server, a notebook, a test) whose process is not ours to change."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__")


def install_error_hook(command: bool = False) -> None:
    """When run as a command, make an uncaught ``ReportedError`` print ``ERROR: <message>`` and exit with status 1;
    elsewhere nothing (the host program keeps its own ``sys.excepthook``). ``command``: the caller is a command
    line tool's ``__main__`` (``python -m scripts.tools...``)."""
    if not (command or running_as_command()):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        # MONAI's config parser wraps errors raised in expressions into RuntimeErrors: look down the chain
        cause = exc
        while cause is not None and not isinstance(cause, ReportedError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            print(f"ERROR: {cause}", file=sys.stderr)
            return
        if command and isinstance(exc, OSError) and exc.filename:
            # a command line tool's missing input or unwritable output: the file and the reason say it all
            print(f"ERROR: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            sys.exit(1)
        previous(exc_type, exc, tb)

    sys.excepthook = hook
