"""The peers' own environments, under a cache directory and never in the project's venv.

A peer brings its own dependency tree (Celery pins its own redis client, LiteLLM pulls in
hundreds of packages); installing them beside msgq would change what msgq is measured with.
Each peer gets `~/.cache/msgq-bench/<peer>/` (or `$MSGQ_BENCH_CACHE/<peer>/`), created on first
use and reused: a file `installed` marks an environment that finished installing, so a run cut
short is retried rather than trusted. An install that fails is returned as a reason, for the
table to print, never raised: a peer that cannot be installed is reported, not dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_TIMEOUT_S = 1800


def cache_root() -> Path:
    return Path(os.environ.get("MSGQ_BENCH_CACHE", Path.home() / ".cache" / "msgq-bench"))


@dataclass
class Env:
    """An installed peer (`path` set) or the reason it is not (`reason` set)."""

    name: str
    path: Path | None = None
    reason: str = ""
    versions: str = ""

    @property
    def bin(self) -> Path:
        assert self.path is not None
        return self.path / "venv" / "bin"


def _tail(text: str, lines: int = 3) -> str:
    """The last lines of an installer's output: what the table says when an install fails."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in kept if "ERR" in line.upper()]  # pip's ERROR:, npm's ERR!
    kept = (errors or kept)[-lines:]
    return " / ".join(kept)[:300] or "no output"


def _run(cmd: list[str], cwd: Path) -> str | None:
    """None on success, else the reason."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"
    if done.returncode != 0:
        return f"{' '.join(cmd[:3])} exited {done.returncode}: {_tail(done.stderr + done.stdout)}"
    return None


def python_env(name: str, specs: list[str], dists: list[str]) -> Env:
    """A venv with `specs` installed by pip; `dists` are the distributions whose versions the
    table shows."""
    path = cache_root() / name
    bin_dir = path / "venv" / "bin"
    if not (path / "installed").exists():
        shutil.rmtree(path / "venv", ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        print(f"peers: installing {name} ({' '.join(specs)}) into {path}", flush=True)
        python = os.environ.get("MSGQ_BENCH_PYTHON", sys.executable)
        reason = _run([python, "-m", "venv", str(path / "venv")], path) or _run(
            [str(bin_dir / "pip"), "install", "--quiet", *specs], path
        )
        if reason:
            return Env(name, reason=reason)
        (path / "installed").write_text(" ".join(specs) + "\n", encoding="utf-8")
    probe = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", probe, *dists], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return Env(name, reason=f"installed but broken: {_tail(done.stderr)}")
    versions = json.loads(done.stdout)
    return Env(name, path=path, versions=", ".join(f"{d} {v}" for d, v in versions.items()))


def node_env(name: str, packages: list[str]) -> Env:
    """A directory with `packages` from npm, for Debian's node (apt-get install nodejs npm
    when missing, as .ci/run does)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
        reason = _run(["apt-get", "update", "-qq"], Path.cwd()) or _run(
            ["apt-get", "install", "-y", "-qq", "nodejs", "npm"], Path.cwd()
        )
        if reason or shutil.which("node") is None:
            return Env(name, reason=f"node/npm missing and apt-get failed: {reason}")
    path = cache_root() / name
    if not (path / "installed").exists():
        path.mkdir(parents=True, exist_ok=True)
        print(f"peers: installing {name} ({' '.join(packages)}) from npm into {path}", flush=True)
        if not (path / "package.json").exists():
            (path / "package.json").write_text('{"private": true}\n', encoding="utf-8")
        reason = _run(["npm", "install", "--silent", *packages], path)
        if reason:
            return Env(name, reason=reason)
        (path / "installed").write_text(" ".join(packages) + "\n", encoding="utf-8")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    versions = [f"node {node.stdout.strip()}"]
    for package in packages:
        meta = path / "node_modules" / package / "package.json"
        if meta.exists():
            versions.append(f"{package} {json.loads(meta.read_text())['version']}")
    return Env(name, path=path, versions=", ".join(versions))
