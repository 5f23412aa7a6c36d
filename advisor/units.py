"""Sizes at the edge of the program.  Inside, every size is an ``int`` of bytes.

Binary units (KiB, MiB, GiB = 2^30) are what nvidia-smi and torch report, so they are the default;
decimal units (KB, MB, GB = 10^9) are accepted when a user writes them explicitly, because GPU
makers sell "80GB" cards.
"""

from __future__ import annotations

import re

from .errors import UnitError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


MAX_SIZE = 1 << 50  # 1 PiB: more than any GPU's memory or any host's RAM; the stated maximum of a size


def parse_size(text: str, default_unit: str = "gib") -> int:
    """Parse '24GiB', '80GB', '24' (GiB by default) into bytes: a positive whole number of bytes up to 1 PiB."""
    text = str(text)
    shown = text if len(text) <= 40 else text[:37] + "..."
    match = _SIZE_RE.match(text) if len(text) <= 64 else None
    if not match or len(match.group(1)) > 24:
        raise UnitError(f"cannot read {shown!r} as a size", "write it like 24GiB, 80GB or 24 (GiB)")
    unit = match.group(2).lower() or default_unit
    if unit not in _UNITS:
        raise UnitError(f"unknown unit {match.group(2)!r} in {shown!r}", "use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB")
    from fractions import Fraction

    size = int(Fraction(match.group(1)) * _UNITS[unit])  # exact: no float rounding, no overflow
    if size <= 0:
        raise UnitError(f"size {shown!r} must be positive", "give a size such as 24GiB")
    if size > MAX_SIZE:
        raise UnitError(f"size {shown!r} is more than 1 PiB", "give a GPU's memory or a machine's RAM, such as 80GiB")
    return size


def gib(n_bytes: int) -> float:
    return n_bytes / GiB


def format_bytes(n_bytes: int, digits: int = 2) -> str:
    """Human form in binary units, like nvitop: '16.31 GiB', '512.00 MiB', '12 B'."""
    value, unit_index = abs(float(n_bytes)), 0
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    while value >= 1024 and unit_index < len(units) - 1:
        value /= 1024
        unit_index += 1
    sign = "-" if n_bytes < 0 else ""
    if unit_index == 0:
        return f"{sign}{value:.0f} B"
    return f"{sign}{value:.{digits}f} {units[unit_index]}"
