"""Command-line entry points: one ``main(argv=None) -> int`` per command."""
from __future__ import annotations

import sys

from vpr_ros.errors import VprError

EXIT_BAD_INPUT = 2
#: What a command reports as one line instead of a traceback: the package's own errors and the
#: operating system's (a read-only or full --output / --cache-dir / --run-dir, a vanished file).
EXPECTED_ERRORS = (VprError, OSError)


def error_line(exc: BaseException) -> str:
    """One line naming the problem; OS errors name the file and the reason (no errno tuple)."""
    if isinstance(exc, OSError) and not isinstance(exc, VprError):
        where = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or str(exc)
        return f"{where}: {reason}" if where else reason
    return str(exc)


def report_error(prog: str, exc: BaseException) -> int:
    """Print ``<prog>: error: <what>`` to stderr; the exit code of bad input (2)."""
    print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
    return EXIT_BAD_INPUT
