"""Parsers for CLI argument values (``K=V`` pairs, sizes, timeouts)."""

from __future__ import annotations

import re

import typer

__all__ = ["parse_duration", "parse_pairs", "parse_size_mib", "parse_timeout"]


def parse_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` → ``{"A": "1", "B": "x=y"}``."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = val
    return pairs


_SIZE = re.compile(r"^\s*(\d+)\s*([mMgGtT])?(?:i?[bB])?\s*$")
_SIZE_FACTOR = {None: 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_size_mib(value: str, option: str) -> int:
    """``512`` (MiB), ``512M``, ``2G``, ``1GiB`` → MiB."""
    match = _SIZE.match(value)
    if not match:
        raise typer.BadParameter(
            f"expected a size like 512, 512M or 2G, got {value!r}", param_hint=option
        )
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_FACTOR[unit]


def parse_timeout(value: str, option: str) -> int | None:
    """Seconds, optionally with an ``s``/``m``/``h`` suffix; ``never``/``none`` → ``None``."""
    text = value.strip().lower()
    if text in ("never", "none", "off"):
        return None
    match = re.match(r"^(\d+)\s*([smh]?)$", text)
    if not match:
        raise typer.BadParameter(
            f"expected seconds (e.g. 300, 5m, 2h) or 'never', got {value!r}", param_hint=option
        )
    factor = {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * factor


_DURATION_FACTOR = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | None, option: str) -> float | None:
    """``90``, ``30s``, ``10m``, ``1.5h``, ``7d`` → seconds; ``None`` stays ``None``."""
    if value is None:
        return None
    match = re.match(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$", value.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(
            f"expected a duration like 90, 30s, 10m, 2h or 7d, got {value!r}", param_hint=option
        )
    return float(match.group(1)) * _DURATION_FACTOR[match.group(2)]
