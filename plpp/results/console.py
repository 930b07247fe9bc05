"""Logging set-up shared by the command-line tools: ``<prog>: warning: <message>`` lines on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Stream handler that writes to the *current* ``sys.stderr`` (so redirection and test capture
    made after the handler was installed still see the messages)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class LowerLevelFormatter(logging.Formatter):
    """Prints the level in lower case, like argparse's ``prog: error: ...`` lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's method name)
        return self._style.format(record).replace(record.levelname, record.levelname.lower(), 1)


def configure_logging(logger: logging.Logger, prog: str, verbosity: int = 0) -> None:
    """Send ``logger``'s records to stderr as ``prog: level: message`` (installed once per logger);
    ``verbosity`` 1 shows info, 2 debug."""
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(LowerLevelFormatter(f"{prog}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(max(logging.DEBUG, logging.WARNING - 10 * verbosity))
