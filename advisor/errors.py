"""One error hierarchy for everything a user can get wrong.

Every error carries a one-line ``message`` and a ``hint`` that says what to do next.  The CLI maps
any ``AdvisorError`` to exit code 2 and one line on stderr; nothing else is allowed to reach the user
as a traceback for bad input.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every non-printable character (ESC, a newline, a NUL) written as its escape."""
    if not isinstance(text, str) or text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class AdvisorError(Exception):
    """Base class: bad input or an impossible request, reported without a traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", field: str | None = None, value: object = None) -> None:
        # a value quoted from the user (a path, a module name) may hold escape sequences or newlines: shown
        # escaped, so the error stays one line and never restyles the terminal
        message, hint = printable(message), printable(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint
        # What went wrong as data: the request field (a PlanRequest / TrainConfig field name, or "option",
        # "format", "plan_file") and the value given.  Each front end words the field in its own terms: a
        # flag in the CLI, a labelled input in the app.  ``message`` and ``hint`` name no flag.
        self.field = field
        self.value = value

    def one_line(self) -> str:
        return f"error: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")


class UsageError(AdvisorError):
    """A flag has an impossible value or flags contradict each other."""


class UnknownModelError(AdvisorError):
    """A model name that is neither in the catalog, a file, nor a reachable hub id."""


class ModelConfigError(AdvisorError):
    """A config.json that cannot be read or describes an unsupported architecture."""


class UnitError(AdvisorError):
    """A size such as '24GiB' that cannot be parsed."""


class NoFitError(AdvisorError):
    """The configuration asked for does not fit the GPU (exit 3, as `plan` when nothing fits)."""

    exit_code = 3
