"""Serving settings: output folder, upload and queue limits, Hugging Face Spaces detection."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT_ENV = "FLUXFORGE_OUTPUT_DIR"
KEEP_ENV = "FLUXFORGE_OUTPUT_KEEP"
QUEUE_ENV = "FLUXFORGE_QUEUE_SIZE"
UPLOAD_ENV = "FLUXFORGE_MAX_UPLOAD"

DEFAULT_KEEP = 200  # newest PNGs kept in the output folder
DEFAULT_QUEUE_SIZE = 16  # jobs waiting for the device; more are refused with "queue is full"
DEFAULT_MAX_UPLOAD = "25mb"
HISTORY_LIMIT = 24  # images kept in one browser session's history
DEVICE_QUEUE = "device"  # concurrency id shared by everything that runs on the device
DOWNLOAD_QUEUE = "download"  # model downloads, one at a time, beside the device's jobs


def on_space() -> bool:
    """True when running as a Hugging Face Space."""
    return bool(os.environ.get("SPACE_ID"))


def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def default_output_dir() -> Path:
    env = os.environ.get(OUTPUT_ENV)
    return Path(env).expanduser().resolve() if env else Path("outputs").resolve()


@dataclass
class Settings:
    """What create_demo was built with; `ui.studio.launch_options` turns it into launch() arguments."""

    api: bool = False
    output_dir: Path = field(default_factory=default_output_dir)
    keep: int = field(default_factory=lambda: _int_env(KEEP_ENV, DEFAULT_KEEP))
    queue_size: int = field(default_factory=lambda: _int_env(QUEUE_ENV, DEFAULT_QUEUE_SIZE))
    max_file_size: str = field(default_factory=lambda: os.environ.get(UPLOAD_ENV, DEFAULT_MAX_UPLOAD))
