"""The Hugging Face hub, through huggingface_hub: whether it can be reached, what is in the local cache, what a download
will fetch (checked against free disk first), and the download itself, reporting bytes as they arrive.

huggingface_hub does the transfer: it resumes a file from its ``.incomplete`` part after a dropped connection (within
a download and in a later one), and sends the token of ``hf auth login`` or HF_TOKEN. Its errors become one line each
(``hub_error``): a gated repository names the licence page and how to log in, and a token the hub rejects is told
apart from a missing one.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantization.units import size_text

from ..errors import UserError

# Single-file checkpoints that sit beside the diffusers folders in official repos: never fetched.
IGNORE = ["*.gguf", "flux1-*.safetensors", "ae.safetensors", "*.md", "*.png", "*.jpg"]
REACH_TIMEOUT_S = 3.0  # how long a start waits to learn that the hub cannot be reached
WORKERS = 8  # files fetched at once (as `hf download` does)
REPORT_EVERY_S = 0.25
DISK_MARGIN = 1 << 30  # left free after a download

Progress = Callable[[str, int, int], None]  # (stage, done, total): here stage "download:<repo id>", bytes
DOWNLOAD = "download:"


def downloading(stage: str) -> str | None:
    """The repo a progress stage reports the download of, or None when it is another stage."""
    return stage[len(DOWNLOAD):] if stage.startswith(DOWNLOAD) else None


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE=1: the hub is never asked."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_REACHABLE: dict[str, bool] = {}


def reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when the hub answers at all (any HTTP status); asked once per endpoint per process."""
    if offline():
        return False
    url = endpoint()
    if url not in _REACHABLE:
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/api/models?limit=1", method="HEAD"), timeout=timeout)
            _REACHABLE[url] = True
        except urllib.error.HTTPError:
            _REACHABLE[url] = True  # it answered
        except (OSError, ValueError):
            _REACHABLE[url] = False
    return _REACHABLE[url]


def forget_reachability() -> None:
    _REACHABLE.clear()


@dataclass(frozen=True)
class TokenState:
    present: bool
    source: str  # where it comes from, as a user would set it ("" when absent)

    def describe(self) -> str:
        if not self.present:
            return "no Hugging Face token (gated models need one: `hf auth login`, or set HF_TOKEN)"
        return f"a Hugging Face token is set ({self.source})"


def token_state() -> TokenState:
    """Whether huggingface_hub has a token to send, and from where (never the token itself)."""
    from huggingface_hub import get_token

    if not get_token():
        return TokenState(False, "")
    if os.environ.get("HF_TOKEN"):
        return TokenState(True, "HF_TOKEN")
    return TokenState(True, "saved by `hf auth login`")


def hub_error(error: Exception, what: str, instead: str, repo_id: str) -> UserError | None:
    """One line for a hub failure of ``what``, or None when ``error`` is not one of the hub's."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    if type(error).__name__ == "DryRunError" and error.__cause__ is not None:  # a plan (dry run) the hub refused
        error = error.__cause__
    page = f"https://huggingface.co/{repo_id}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    token = token_state()
    if isinstance(error, GatedRepoError):
        if not token.present:
            return UserError(f"{what} is gated: accept its licence on {page}, then log in with `hf auth login` (or "
                             f"set HF_TOKEN); or {instead}.")
        return UserError(f"{what} is gated and the Hugging Face token ({token.source}) has no access to it yet: "
                         f"accept its licence on {page} with that account; or {instead}.")
    if isinstance(error, HfHubHTTPError) and status == 401 and token.present:
        return UserError(f"{what}: the Hugging Face hub rejects the token ({token.source}); it is invalid or was "
                         "revoked: make a new one on https://huggingface.co/settings/tokens and log in again with "
                         f"`hf auth login` (or set HF_TOKEN); or {instead}.")
    if isinstance(error, RepositoryNotFoundError):
        return UserError(f"{what} was not found on the Hugging Face hub (a private repo needs a login); check the id, "
                         f"or {instead}.")
    if isinstance(error, LocalEntryNotFoundError) or isinstance(error, (ConnectionError, TimeoutError)):
        return UserError(f"{what} is not in the local cache and the Hugging Face hub cannot be reached; connect, or "
                         f"{instead}.")
    if type(error).__module__.startswith(("httpx", "httpcore")):  # the connection dropped and stayed down
        return UserError(f"{what}: the connection to the Hugging Face hub dropped ({type(error).__name__}); run it "
                         "again to resume the download where it stopped.")
    if isinstance(error, HfHubHTTPError):
        return UserError(f"{what}: the Hugging Face hub answered HTTP {status or '?'}; try again later, or {instead}.")
    return None


def from_hub(fetch: Callable[[], Path], what: str, instead: str, repo_id: str) -> Path:
    """``fetch()``, with the hub's failures as one line each: ``what`` failed, do ``instead``."""
    try:
        return fetch()
    except Exception as error:
        mapped = hub_error(error, what, instead, repo_id)
        if mapped is None:
            raise
        raise mapped from None


# ---- the local cache ---------------------------------------------------------------------------------------------
def is_cached(repo_id: str) -> bool:
    """True when the repo's pipeline index is in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def local_snapshot(repo_id: str) -> Path | None:
    """The repo's complete snapshot in the local cache (no network), or None when it is missing or partial."""
    from huggingface_hub import snapshot_download

    if not is_cached(repo_id):
        return None
    try:
        return Path(snapshot_download(repo_id, ignore_patterns=IGNORE, local_files_only=True, tqdm_class=_quiet(),
                                      endpoint=endpoint()))
    except Exception:  # noqa: BLE001  (partial, or a cache huggingface_hub cannot read: not usable as it is)
        return None


def cached_bytes(repo_id: str) -> int:
    """Bytes of the repo's files in the local cache (complete files only)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir())
    except Exception:  # noqa: BLE001  (no cache yet)
        return 0
    return sum(repo.size_on_disk for repo in info.repos if repo.repo_id == repo_id and repo.repo_type == "model")


# ---- downloading -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadPlan:
    """What a download of ``repo_id`` fetches: (file, bytes) not yet cached, of ``total_bytes`` in all."""

    repo_id: str
    revision: str
    fetch: tuple[tuple[str, int], ...]
    total_bytes: int
    free_bytes: int
    folder: Path  # the cache it goes to

    @property
    def fetch_bytes(self) -> int:
        return sum(size for _, size in self.fetch)

    def check_disk(self) -> None:
        need = self.fetch_bytes + DISK_MARGIN
        if self.fetch and need > self.free_bytes:
            raise UserError(f"model={self.repo_id!r} needs {size_text(self.fetch_bytes)} to download but {size_text(self.free_bytes)} "
                            f"is free on the disk of {self.folder} (the Hugging Face cache); free some space, or point "
                            "HF_HOME at a larger disk.")


def free_disk(folder: Path) -> int:
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def plan_download(repo_id: str, ignore=IGNORE) -> DownloadPlan:
    """What downloading ``repo_id`` would fetch (the hub's file list against the local cache); asks the hub."""
    from huggingface_hub import snapshot_download

    infos = snapshot_download(repo_id, ignore_patterns=ignore, dry_run=True, tqdm_class=_quiet(), endpoint=endpoint())
    revision = infos[0].commit_hash if infos else ""
    fetch = tuple(sorted((i.filename, int(i.file_size or 0)) for i in infos if i.will_download))
    total = sum(int(i.file_size or 0) for i in infos)
    return DownloadPlan(repo_id, revision, fetch, total, free_disk(cache_dir()), cache_dir())


def download(repo_id: str, progress: Progress | None = None, ignore=IGNORE) -> Path:
    """The repo's snapshot folder: the local one when complete, else downloaded (disk checked first), reporting
    ``progress("download:<repo id>", bytes done, bytes to fetch)``. Hub failures raise one line (hub_error)."""
    found = local_snapshot(repo_id)
    if found is not None:
        return found
    what, instead = f"model={repo_id!r}", "pass a local directory, or use the demo model 'tiny'"
    if not reachable():
        raise hub_error(ConnectionError(), what, instead, repo_id)
    return from_hub(lambda: _download(repo_id, progress, ignore), what, instead, repo_id)


def _download(repo_id: str, progress: Progress | None, ignore) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    plan = plan_download(repo_id, ignore)
    plan.check_disk()
    transfer = Transfer(plan.fetch_bytes)
    stage, url = DOWNLOAD + repo_id, endpoint()
    report = progress or (lambda stage, done, total: None)
    report(stage, 0, transfer.total)
    if plan.fetch:
        bar = transfer.bar_class()
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            jobs = [pool.submit(hf_hub_download, repo_id, name, revision=plan.revision, tqdm_class=bar, endpoint=url)
                    for name, _size in plan.fetch]
            try:
                pending = jobs
                while pending:  # progress is reported from this thread (the caller's), never from the workers
                    done, pending = wait(pending, timeout=REPORT_EVERY_S, return_when=FIRST_EXCEPTION)
                    report(stage, transfer.done, transfer.total)
                    for job in done:
                        job.result()  # the first failure, as it was raised
            finally:
                transfer.stopped = True  # a failed or stopped download: the other files stop at their next chunk
    report(stage, transfer.total, transfer.total)
    return Path(snapshot_download(repo_id, revision=plan.revision, ignore_patterns=ignore, tqdm_class=_quiet(),
                                  endpoint=url))


class Transfer:
    """Bytes arriving for one download, across its files and worker threads (files resumed count their part on
    disk as done)."""

    def __init__(self, total: int):
        self.total, self.done, self.stopped = total, 0, False
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        if self.stopped:
            raise InterruptedError("download stopped")
        with self._lock:
            self.done = max(0, min(self.total, self.done + int(count)))

    def bar_class(self) -> type:
        """A stand-in for tqdm that huggingface_hub updates per file as bytes arrive."""
        transfer = self

        class FileBar:
            def __init__(self, *args, initial: int = 0, **kwargs):
                transfer.add(initial)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                return None

            def update(self, count: int = 1) -> None:
                transfer.add(count)

            def close(self) -> None:
                return None

        return FileBar


def _quiet() -> type:
    """huggingface_hub's own bars, switched off (the studio reports progress itself)."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Quiet(hub_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


class Meter:
    """Turns (done, total) byte counts into what a person reads: '1.2 GB of 23.8 GB · 45.0 MB/s · 8 min left'."""

    WINDOW_S = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._samples: list[tuple[float, int]] = []

    def text(self, done: int, total: int) -> str:
        now = self._clock()
        self._samples = [(t, d) for t, d in self._samples if now - t <= self.WINDOW_S] + [(now, done)]
        start_time, start_done = self._samples[0]
        rate = (done - start_done) / (now - start_time) if now > start_time else 0.0
        line = f"{size_text(done)} of {size_text(total)}"
        if rate > 0:
            left = max(0.0, (total - done) / rate)
            line += f" · {size_text(rate)}/s · {_duration(left)} left"
        return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
