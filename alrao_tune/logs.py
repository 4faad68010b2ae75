"""Logging helpers shared by the layers (standard library only)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Raises logger ``name`` to ERROR inside the block and restores its level after (a
    library's warning that does not apply to how alrao_tune calls it)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
