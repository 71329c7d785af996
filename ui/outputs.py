"""The output folder: every generated PNG (with its metadata) is written here, newest kept.

Several sessions share one folder. Pruning never deletes a file that is being returned (the one just saved,
and the last results handed out, at least one per session's run); a session's history drops the files that
are gone (ui.runner.add_history), so it never shows a dead entry.
"""

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

    def save(self, result, tool: str, seed: int, keep_also: tuple[Path, ...] = ()) -> Path:
        """Write the result as a PNG with its metadata text chunks; returns the path.

        The new file, and `keep_also` (results of the same run not returned yet), survive the pruning.
        """
        path = result.save(self.new_path(tool, seed))
        self.prune(keep=(path, *keep_also))
        return path

    def prune(self, keep: tuple[Path, ...] = ()) -> None:
        """Delete the oldest studio PNGs beyond `keep` (other files are never touched, nor those in `keep`)."""
        protected = {Path(p).name for p in keep}
        with self._lock:
            files = sorted(self.root.glob(f"{PREFIX}*.png"), key=_mtime, reverse=True)
            for old in files[self.keep:]:
                if old.name not in protected:
                    old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another session meanwhile
        return 0.0
