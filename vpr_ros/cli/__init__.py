"""Command-line entry points: one ``main(argv=None) -> int`` per command."""
from __future__ import annotations

import argparse
import math
import sys

from vpr_ros.errors import VprError

EXIT_BAD_INPUT = 2
#: What a command reports as one line instead of a traceback: the package's own errors and the
#: operating system's (a read-only or full --output / --cache-dir / --run-dir, a vanished file).
EXPECTED_ERRORS = (VprError, OSError)


class HelpWithDefaults(argparse.HelpFormatter):
    """``--help`` lines end with the option's default, unless it is empty (None, '', False) or
    the text already names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, "", False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _number(text: str, kind: type, lowest: float, inclusive: bool) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value) or (value < lowest if inclusive else value <= lowest):
        raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {lowest:g}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return int(_number(text, int, 1, True))


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return int(_number(text, int, 0, True))


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, 0.0, False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, 0.0, True)


def cosine(text: str) -> float:
    """argparse type: a cosine similarity in [-1, 1]."""
    value = _number(text, float, -1.0, True)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text}")
    return value


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
