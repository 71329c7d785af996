"""Real weights from the hub, through the real huggingface_hub client against a local server that speaks the hub's HTTP
(tests/hub_server.py): official models by default, downloads with progress, resume, disk checks, gated repos and
tokens, `models`, and how fast a studio starts with and without the hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.errors import UserError
from pipelines.images import read_metadata
from pipelines.models import hub
from pipelines.models.sources import resolve_model
from pipelines.tools import tool_names
from pipelines.tools import get_tool
from tests.conftest import BIG_REPO
from tests.hub_server import GOOD_TOKEN, NO_ACCESS_TOKEN

ROOT = Path(__file__).resolve().parents[1]
SCHNELL, DEV = "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev"
SMALL = ["--width", "128", "--height", "128", "--steps", "2"]


def run_cli(env, *args, timeout=300):
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_generate_without_a_model_downloads_the_official_one_with_a_progress_bar(hub_home, local_hub, tmp_path):
    out = tmp_path / "fox.png"
    proc = run_cli(hub_home, "generate", "--tool", "schnell", "--prompt", "a fox", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"Downloading {SCHNELL}" in proc.stderr and "100%" in proc.stderr and "B/s" in proc.stderr
    assert "demo model" not in proc.stderr
    assert read_metadata(out)["model"] == SCHNELL
    fetched = {path.rsplit("/", 1)[-1] for path, _ in local_hub.downloads(SCHNELL)}
    assert "diffusion_pytorch_model.safetensors" in fetched and "model_index.json" in fetched

    local_hub.log.clear()  # a second run reads the local cache: no file is fetched again
    proc = run_cli(hub_home, "generate", "--tool", "schnell", "--prompt", "a fox", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Downloading" not in proc.stderr and local_hub.downloads() == []


def test_a_dropped_connection_resumes_where_it_stopped(hub_home, local_hub):
    big = local_hub.repos[BIG_REPO].folder / "big.bin"
    local_hub.drop_once["big.bin"] = (10 << 20) + 12345  # past one 10 MB chunk, then the connection drops
    seen = []
    folder = hub.download(BIG_REPO, lambda stage, done, total: seen.append((stage, done, total)))
    ranges = [rng for path, rng in local_hub.downloads(BIG_REPO) if path.endswith("/big.bin")]
    assert ranges[0] == "" and ranges[1].startswith("bytes=") and int(ranges[1][6:].rstrip("-")) >= 10 << 20
    assert hashlib.sha256((folder / "big.bin").read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert seen[-1] == (f"download:{BIG_REPO}", seen[-1][2], seen[-1][2]) and seen[-1][2] > 12 << 20
    assert all(0 <= done <= total for _, done, total in seen)


def test_a_download_that_does_not_fit_the_disk_is_refused_before_it_starts(hub_home, local_hub, monkeypatch):
    monkeypatch.setattr(hub, "free_disk", lambda folder: 2 << 20)
    with pytest.raises(UserError, match=r"needs 1[0-9] MiB to download but 2 MiB is free on the disk of .*HF_HOME"):
        hub.download(BIG_REPO)
    assert local_hub.downloads() == []


@pytest.mark.parametrize("token, says", [
    (None, r"is gated: accept its licence on https://huggingface.co/black-forest-labs/FLUX.1-dev, then log in with "
           r"`hf auth login` \(or set HF_TOKEN\)"),
    (NO_ACCESS_TOKEN, r"is gated and the Hugging Face token \(HF_TOKEN\) has no access to it yet: accept its licence "
                      r"on https://huggingface.co/black-forest-labs/FLUX.1-dev with that account"),
    ("hf_not_a_token", r"rejects the token \(HF_TOKEN\); it is invalid or was revoked: make a new one"),
])
def test_a_gated_repo_says_what_to_do_for_each_token(hub_home, monkeypatch, token, says):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(UserError, match=says) as caught:
        resolve_model(DEV, get_tool("dev"))
    assert "\n" not in str(caught.value)


def test_a_gated_repo_downloads_with_a_token_that_has_access(hub_home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert resolve_model(DEV, get_tool("dev")).root.joinpath("model_index.json").is_file()


def test_the_cli_gives_one_line_and_exit_2_for_a_gated_repo(hub_home, tmp_path):
    proc = run_cli(hub_home, "generate", "--tool", "dev", "--prompt", "a fox", *SMALL, "--out",
                   str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "hf auth login" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_models_lists_every_tool_and_downloads_ahead_of_time(hub_home, local_hub):
    proc = run_cli(hub_home, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    rows = {row["tool"]: row for row in listing["models"] if row["kind"] != "auxiliary"}
    assert listing["reachable"] and set(rows) == set(tool_names())
    assert rows["schnell"]["model"] == SCHNELL and rows["schnell"]["downloaded"] == "no"
    assert rows["schnell"]["gated"] is False and rows["dev"]["gated"] is True
    assert rows["schnell"]["bytes"] == sum(p.stat().st_size for p in local_hub.repos[SCHNELL].folder.rglob("*")
                                           if p.is_file())  # the hub's own file list
    assert "hf auth login" in rows["dev"]["note"]  # a gated repo cannot be sized file by file without a token
    assert "no Hugging Face token" in listing["token"]

    proc = run_cli(hub_home, "models", "download", "--tool", "schnell")
    assert proc.returncode == 0, proc.stderr
    assert f"Downloading {SCHNELL}" in proc.stderr
    again = json.loads(run_cli(hub_home, "models", "--json").stdout)
    schnell = next(row for row in again["models"] if row["tool"] == "schnell")
    assert schnell["downloaded"] == "yes" and Path(schnell["where"]).joinpath("model_index.json").is_file()

    proc = run_cli(hub_home, "models", "download")
    assert proc.returncode == 2 and "--tool" in proc.stderr


def test_doctor_says_whether_a_token_is_set_never_what_it_is(hub_home):
    proc = run_cli({**hub_home, "HF_TOKEN": GOOD_TOKEN}, "doctor")
    assert proc.returncode == 0, proc.stderr
    assert "a Hugging Face token is set (HF_TOKEN)" in proc.stdout and GOOD_TOKEN not in proc.stdout + proc.stderr
    assert "no Hugging Face token" in run_cli(hub_home, "doctor").stdout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_page(env: dict, timeout: float = 60.0) -> tuple[float, str]:
    """Start `python app.py` on a free port; (seconds until its page answers, the page)."""
    port = closed_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode()
                return time.perf_counter() - started, page
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read())
                time.sleep(0.25)
        raise AssertionError(f"no page within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_learning_that_the_hub_cannot_be_reached_takes_at_most_its_timeout(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as silent:  # accepts connections and never answers, as a blackholed network does
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for url, limit in ((f"http://127.0.0.1:{silent.getsockname()[1]}", hub.REACH_TIMEOUT_S + 1.0),
                           (f"http://127.0.0.1:{closed_port()}", 1.0)):  # refused at once
            monkeypatch.setattr(constants, "ENDPOINT", url)
            hub.forget_reachability()
            started = time.perf_counter()
            assert hub.reachable() is False
            assert time.perf_counter() - started <= limit
            started = time.perf_counter()
            assert hub.reachable() is False and time.perf_counter() - started < 0.01  # asked once per process
    hub.forget_reachability()


@pytest.mark.slow
def test_a_start_without_the_hub_serves_the_demo_model_and_says_why(hub_home):
    offline = {**hub_home, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}  # nothing listens there
    seconds, page = first_page(offline)
    assert "Demo model." in page and "Every tool runs" in page and "the Hugging Face hub cannot be reached" in page
    seconds, page = first_page(hub_home)  # with the hub reachable: the official models, no demo banner
    assert "Demo model." not in page
