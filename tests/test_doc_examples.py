"""Every `sh` and `python` example in the README and the docs runs, as written, against a real
`msgq dev`, and every `toml` tenants file parses (issue 34: the README's curl example failed at
its first step, and the two after it with it).

How: one `msgq dev` (embedded Redis, simulator, worker, API) starts in a scratch directory that
holds a copy of `samples/` and a link to the venv, as a newcomer's checkout does. Each page's
blocks then run in order, sharing the variables an `sh` block exports, so the README's
`export ANTHROPIC_BASE_URL=...` reaches the SDK example after it. `sh` runs under
`bash -e -o pipefail` with `curl` failing on an HTTP error (`--fail-with-body`), so a 400 or a
404 fails the example; `python` runs with top-level `await` allowed, as in a notebook. The
only rewrite is of the documented default addresses to the stack's free ports (the defaults
may be taken by another stack on this machine): `localhost:8000` and `msgq:8000` to its API,
`localhost:6379` to its Redis.

A block that cannot run here says why just above it, in an HTML comment that neither GitHub
nor the site shows: `<!-- not run: REASON -->` (a foreground `msgq dev`, `make test` itself,
Docker). Any other block that fails, or a new one nobody ran, fails this test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgq.dev.embedded_redis import free_ports
from msgq.dev.stack import msgq_command
from msgq.tenancy.tenants import parse_tenants

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = ("sh", "python", "toml")
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
# The guides' fixed keys, beside the one `msgq dev` would make (written to .msgq/api-key first
# so that the README's `$(cat .msgq/api-key)` reads it): tenant `dev`, as there.
DEV_KEY, GUIDE_KEY = "msgq-dev-3f9c0a1b2c3d4e5f", "key-a-0123456789"
CURL = 'curl() { command curl --fail-with-body --silent --show-error "$@"; }\n'
PYTHON_RUNNER = """
import ast, asyncio, sys
code = compile(sys.stdin.read(), sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given, if it is not run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    """The fenced blocks of one page, with their language and any `not run` reason."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        reason = NOT_RUN.match(lines[i - 1]) if i else None
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Example(page, i + 1, fence[1], code, reason[1] if reason else None))
        i = end + 1
    return found


@dataclass
class DevStack:
    cwd: Path
    api: str  # host:port
    redis: str  # host:port
    banner: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """`msgq dev` in a scratch checkout: samples copied (a caption run writes sidecars beside
    them), the venv linked, the guides' keys configured."""
    cwd = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "samples", cwd / "samples")
    (cwd / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (cwd / ".msgq").mkdir()
    (cwd / ".msgq" / "api-key").write_text(DEV_KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSGQ_", "ANTHROPIC_"))}
    env.pop("REDIS_URL", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    ports = [str(p) for p in free_ports(3)]
    args = ["--redis-port", ports[0], "--api-port", ports[1], "--sim-port", ports[2]]
    stack_env = {**env, "MSGQ_API_KEYS": f"dev:{DEV_KEY},tenant-a:{GUIDE_KEY}"}
    process = subprocess.Popen(
        msgq_command("dev", *args), cwd=cwd, env=stack_env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    banner = []
    while not banner or not banner[-1].startswith("Ctrl-C"):
        line = process.stdout.readline()
        assert line, "msgq dev ended before its banner"
        banner.append(line)
    try:
        yield DevStack(cwd, f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[0]}", "".join(banner), env)
    finally:
        process.send_signal(2)  # Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def on_the_stack(code: str, stack: DevStack) -> str:
    """The documented default addresses, turned into the stack's."""
    for host in ("localhost:8000", "127.0.0.1:8000", "msgq:8000"):
        code = code.replace(host, stack.api)
    for host in ("localhost:6379", "127.0.0.1:6379"):
        code = code.replace(host, stack.redis)
    return code


def run_sh(code: str, stack: DevStack, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The block under `bash -e -o pipefail`; then the environment it leaves, for the next."""
    with tempfile.TemporaryDirectory() as scratch:
        left = Path(scratch) / "env.json"
        dump = f'python -c "import json, os; print(json.dumps(dict(os.environ)))" > {left}'
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", f"{CURL}{code}\n{dump}\n"],
            cwd=stack.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if done.returncode == 0:
            env.clear()
            env.update(json.loads(left.read_text()))
    return done


def run_python(
    code: str, stack: DevStack, env: dict[str, str], where: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PYTHON_RUNNER, where],
        input=code,
        cwd=stack.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_on_the_page_runs(page: Path, dev_stack: DevStack) -> None:
    """Each `sh` and `python` block exits 0, in page order, and each `toml` block is a valid
    tenants file; a block not run says why."""
    env = dict(dev_stack.env)
    for example in examples(page):
        if example.lang not in RUN:
            continue
        if example.not_run is not None:
            assert example.not_run.strip(), f"{example.where}: say why it is not run"
            continue
        code = on_the_stack(example.code, dev_stack)
        if example.lang == "toml":  # a tenants file: msgq's own parser must take it
            parse_tenants(code, example.where)
            continue
        if example.lang == "sh":
            done = run_sh(code, dev_stack, env)
        else:
            done = run_python(code, dev_stack, env, example.where)
        assert done.returncode == 0, f"{example.where} failed:\n{done.stdout}\n{done.stderr}"


def test_the_readme_shows_the_banner_msgq_dev_prints(dev_stack: DevStack) -> None:
    """The README's `msgq dev` output has the lines the real banner has, in its order (it
    left out lines the program printed)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("```\nmsgq dev is running\n", 1)[1].split("```", 1)[0]

    def labels(text: str) -> list[str]:
        return [line.split()[0] for line in text.splitlines() if line.strip()]

    assert labels(shown) == labels(dev_stack.banner.split("\n", 1)[1])
