"""What the benchmarks share: the options measured, CPU accounting, logging, worker processes and result files."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from quantization.config import FULL_PRECISION, QuantConfig
from quantization.policy import all_configs

REPO = Path(__file__).resolve().parents[1]
ALL_OPTIONS = all_configs() + (FULL_PRECISION,)


def config_for(backend: str, format: str) -> QuantConfig:
    for config in ALL_OPTIONS:
        if (config.backend, config.format) == (backend, format):
            return config
    raise ValueError(f"unknown backend:format {backend}:{format}; choose from "
                     + ", ".join(f"{c.backend}:{c.format}" for c in ALL_OPTIONS))


def add_options(parser, quiet_wait: float, only_note: str = "") -> None:
    """The options every benchmark takes: --only and --quiet-wait."""
    parser.add_argument("--only", default=None, help="comma list of backend:format (e.g. torchao:int8_dynamic,"
                                                     f"quanto:int4){only_note}")
    parser.add_argument("--quiet-wait", type=float, default=quiet_wait, metavar="SECONDS",
                        help="on a CPU, wait up to this long before each measurement for other processes to go quiet")


def weights_root(value: str | None) -> Path:
    """Where the random-weight components are saved: ``value``, or the studio cache."""
    from pipelines.paths import cache_root

    return Path(value) if value else cache_root()


def parse_only(only: str) -> list[QuantConfig]:
    """``backend:format`` items of a comma list (the --only option)."""
    return [config_for(*item.strip().split(":", 1)) for item in only.split(",") if item.strip()]


def bench_args(argv: list[str] | None) -> list[str]:
    """The command line, without the `--` of `app.py bench -- --quick`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return argv[1:] if argv[:1] == ["--"] else argv


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every process)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def other_share(busy: float, own: float, seconds: float) -> float:
    """Share of the machine's CPU time other processes used over ``seconds`` since busy_seconds() and
    time.process_time() read ``busy`` and ``own``."""
    other = (busy_seconds() - busy) - (time.process_time() - own)
    return max(0.0, other) / (seconds * (os.cpu_count() or 1))


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark worker process: this repository importable, plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def logger(prefix: str):
    """A function printing ``[prefix] message`` to stderr."""
    def log(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return log


class LiveBytes:
    """A context in which the bytes held by tensors that operations create are counted, and their peak kept (weights
    and inputs made outside are not counted): what a block of code needs beyond its inputs, on any device and
    whatever the allocator (a CPU has no allocated-memory counter to read)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._count(out)
                return out

        self._mode = Mode()
        self.live = self.peak = 0
        self._storages: dict[int, list] = {}

    def __enter__(self) -> "LiveBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def _count(self, out) -> None:
        import weakref

        import torch
        from torch.utils._pytree import tree_leaves

        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            pointer = tensor.untyped_storage().data_ptr()
            entry = self._storages.get(pointer)
            if entry is None:
                if tensor._is_view():
                    continue  # a view into memory made outside
                entry = self._storages[pointer] = [0, tensor.untyped_storage().nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(tensor, self._release, pointer)

    def _release(self, pointer: int) -> None:
        entry = self._storages.get(pointer)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self._storages[pointer]


class Check:
    """One row of a check command's table (bench gpu-check, bench mps-check): ok is None until it has run."""

    def __init__(self, name: str):
        self.name, self.ok, self.measured, self.seconds = name, None, "", 0.0


def check_table(title: str, checks: list[Check], device, total_s: float) -> str:
    """The one table a check command prints: its title line, then a row per check."""
    import torch

    from quantization.doctor import device_name

    rows = [f"{title} on {device} ({device_name(device)}), torch {torch.__version__}: {total_s:.0f} s", "",
            "| check | result | s | measured |", "|---|---|---:|---|"]
    for check in checks:
        result = {True: "ok", False: "FAILED", None: "not run"}[check.ok]
        rows.append(f"| {check.name} | {result} | {check.seconds:.0f} | {check.measured} |")
    return "\n".join(rows)


def finish_checks(title: str, checks: list[Check], device, total_s: float, out) -> int:
    """Print a check command's table (and write it to ``out`` when given); 1 when a check failed, else 0."""
    text = check_table(title, checks, device, total_s)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0 if all(c.ok is not False for c in checks) else 1
