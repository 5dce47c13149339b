"""What the command line shows besides results: library notes on stderr, third-party chatter off.

One setup for every process that prints: the CLI's own, and each sweep worker it spawns (a
spawned process starts with Python's defaults, so it calls this again instead of inheriting).
"""
from __future__ import annotations

import logging
import sys
import warnings

QUIET = ("fastai", "timm", "PIL", "matplotlib")  # their INFO lines are not for the user


def configure_logging(prefix: str = "") -> None:
    """INFO notes as `note: <prefix><message>` on stderr; the libraries above at WARNING; no
    FutureWarning (third-party deprecation chatter). Keeps a setup that is already there."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format=f"note: {prefix}%(message)s", stream=sys.stderr)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
