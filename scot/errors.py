"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad option, a malformed
annotation) is raised as :class:`ScotError` with a one-line message that names the file
or argument and says what is wrong.  Library users catch the one exception type; the CLI
prints the line and exits with status 2.

Errors speak the library's language: an error about an option carries the option's
*parameter name* (``ScotError("must be > 0, got 0", option="eps")`` reads
``eps: must be > 0, got 0``).  The command line, which knows its flags, shows the same
error as ``--eps: must be > 0, got 0`` through :meth:`ScotError.for_cli`.
"""

from __future__ import annotations

from collections.abc import Callable


class ScotError(Exception):
    """A problem with the user's input or environment, described in one line.

    Args:
        message: what is wrong (whitespace is collapsed to keep it on one line).
        option: the parameter the problem is about (a :class:`~scot.SCOTConfig` field or a
            function argument such as ``category``), or None.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        self.message = " ".join(str(message).split())
        self.option = option
        super().__init__(f"{option}: {self.message}" if option else self.message)

    def for_cli(self, flag_of: Callable[[str], str]) -> str:
        """The message with the option shown as the command-line flag ``flag_of(option)``."""
        return f"{flag_of(self.option)}: {self.message}" if self.option else self.message


class WeightsUnavailableError(ScotError):
    """Pretrained weights are neither cached nor downloadable."""

    def __init__(self, message: str, short: str = "") -> None:
        super().__init__(message)
        self.short = short or str(self)
