"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad option, a malformed
annotation) is raised as :class:`ScotError` with a one-line message that names the file
or argument and says what is wrong.  The CLI prints that line and exits with status 2;
library users can catch the one exception type.
"""

from __future__ import annotations


class ScotError(Exception):
    """A problem with the user's input or environment, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class WeightsUnavailableError(ScotError):
    """Pretrained weights are neither cached nor downloadable."""

    def __init__(self, message: str, short: str = "") -> None:
        super().__init__(message)
        self.short = short or str(self)
