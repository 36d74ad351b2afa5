"""Argument types shared by several commands."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '1280x800' -> (1280, 800) (H x W), for the command lines."""
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or HxW, e.g. 224 or 1280x800") from None
