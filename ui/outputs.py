"""The output folder: every generated PNG (with its metadata) is written here, newest kept."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

PREFIX = "fluxforge-"


class OutputFolder:
    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep
        self._lock = threading.Lock()

    def new_path(self, tool: str, seed: int) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.root / f"{PREFIX}{stamp}-{tool}-{seed}-{uuid.uuid4().hex[:6]}.png"

    def save(self, result, tool: str, seed: int) -> Path:
        """Write the result as a PNG with its metadata text chunks; returns the path."""
        path = result.save(self.new_path(tool, seed))
        self.prune()
        return path

    def prune(self) -> None:
        """Delete the oldest studio PNGs beyond `keep` (other files are never touched)."""
        with self._lock:
            files = sorted(self.root.glob(f"{PREFIX}*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[self.keep:]:
                old.unlink(missing_ok=True)
