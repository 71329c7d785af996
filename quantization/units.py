"""How the studio writes a byte count: one rule wherever a size is shown."""

from __future__ import annotations


def size_text(count: float) -> str:
    """A byte count as people read it, by one rule wherever the studio shows a size (estimates, reasons, status,
    terminal): GiB with one decimal from 1 GiB, else whole MiB from 1 MiB, else whole KiB, else bytes."""
    count = float(count)
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    if count >= 2**20:
        return f"{count / 2**20:.0f} MiB"
    if count >= 2**10:
        return f"{count / 2**10:.0f} KiB"
    return f"{count:.0f} B"
