"""Listing and clearing a quantized-weights store: data for the caller to show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .store import MANIFEST, discard, weight_format


def entries(root: Path) -> list[dict]:
    """Every entry, newest first: what it is, its size on disk, and 'ok', 'incomplete' or 'damaged'.

    Sizes are checked here, not checksums (those are checked on every load).
    """
    root = Path(root)
    rows = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name.startswith(".trash-"):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        row = {"name": path.name, "path": str(path), "bytes": size, "model": "", "component": "", "class": "",
               "backend": "", "format": "", "dtype": "", "device": "", "created": "", "status": "incomplete"}
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            fields = manifest["fields"]
            files_ok = all((path / name).is_file() and (path / name).stat().st_size == item["bytes"]
                           for name, item in manifest["files"].items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            rows.append(row)
            continue
        row.update(model=manifest.get("model") or manifest.get("folder", ""), component=fields.get("component", ""),
                   backend=fields.get("backend", ""), dtype=fields.get("dtype", ""), device=fields.get("device", ""),
                   format=weight_format(fields),
                   created=manifest.get("created", ""), status="ok" if files_ok else "damaged",
                   **{"class": fields.get("class", "").rsplit(".", 1)[-1]})
        rows.append(row)
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def clear(root: Path) -> dict:
    """Remove every entry (and any left-over temporary folder); returns {"entries": n, "bytes": freed}."""
    root = Path(root)
    removed, freed = 0, 0
    for path in list(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir():
            continue
        freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        removed += not path.name.startswith(".")
        if path.name.startswith(".trash-"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            discard(path)
    return {"entries": removed, "bytes": freed}
