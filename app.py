"""FluxForge Studio: `python app.py` opens the studio; `python app.py generate|doctor` runs headless."""

from __future__ import annotations

import sys


def create_demo(**kwargs):
    """Build the studio's Blocks without launching it (for tests, mounting and Spaces)."""
    from ui.studio import create_demo as build

    return build(**kwargs)


if __name__ == "__main__":
    from cli import main

    sys.exit(main())
