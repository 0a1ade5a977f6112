"""`msgq dev`: one command starts Redis, simulator and worker; Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from msgq.client import Client
from msgq.dev.embedded_redis import EmbeddedRedis, free_ports
from msgq.dev.stack import msgq_command, simulator_on_free_port
from msgq.http.ui.session import COOKIE
from schemas import JobStatus
from tests.conftest import SAMPLES, eventually
from tests.test_webhooks import Receiver, _count_is, receiver, verified

__all__ = ["receiver"]  # the fixture, imported for the webhook test


async def start_dev(
    tmp_path: Path, *more: str, sigint_ignored: bool = False, **extra_env: str
) -> tuple[asyncio.subprocess.Process, str]:
    """`msgq dev` in `tmp_path` on three free ports (and options `more`); returns it and its
    banner. `sigint_ignored`: started as a shell's background job is, SIGINT ignored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    ports = [str(p) for p in free_ports(3)]
    args = ["--redis-port", ports[0], "--api-port", ports[1], "--sim-port", ports[2], *more]
    proc = await asyncio.create_subprocess_exec(
        *msgq_command("dev", *args),
        env={**env, **extra_env},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not lines or "Ctrl-C" not in lines[-1]:
            line = (await proc.stdout.readline()).decode()
            assert line, "msgq dev ended before its banner"
            lines.append(line)
    return proc, "".join(lines)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_sigint_stops_msgq_dev_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A shell's background job (`msgq dev &`, nohup) starts with SIGINT ignored, and Python
    keeps it so: `kill -INT` did nothing and `msgq dev` ran on. It stops cleanly all the same."""
    proc, _ = await start_dev(tmp_path, sigint_ignored=True)
    await stop_dev(proc)
    assert not (tmp_path / ".msgq" / "dev.env").exists()


async def test_dev_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Without a key the simulator answers; one banner names Redis, the API, /ui, an admin key
    and how to stop; SIGINT stops every process it started and removes dev.env."""
    proc, text = await start_dev(tmp_path)
    assert "simulator" in text and "ANTHROPIC_API_KEY is not set" in text
    match = re.search(r"REDIS_URL=(\S+)", text)
    assert match is not None
    url = match[1]
    assert re.search(
        r"dashboard  http://127.0.0.1:\d+/ui  \(sign in with msgq-dev-\w+: an admin", text
    )
    assert (tmp_path / ".msgq" / "redis" / "appendonlydir").is_dir()
    assert f"REDIS_URL={url}" in (tmp_path / ".msgq" / "dev.env").read_text()

    async with Client.from_url(url) as client:
        job = await client.submit(orjson.loads((SAMPLES / "requests" / "text.json").read_bytes()))
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED

    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        probe.ping()  # the embedded Redis is gone too
    probe.close()
    assert not (tmp_path / ".msgq" / "dev.env").exists()


async def test_the_cli_finds_msgq_dev_and_the_dashboard_shows_its_jobs(tmp_path: Path) -> None:
    """With REDIS_URL unset, `msgq submit` run beside `msgq dev` uses its Redis (dev.env), and
    the key in the banner signs in to /ui as an admin who sees that job."""
    proc, text = await start_dev(tmp_path)
    try:
        key = re.search(r"x-api-key: (msgq-dev-\w+)", text)
        api = re.search(r"HTTP API   (\S+)", text)
        assert key is not None and api is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
        sample = str(SAMPLES / "requests" / "text.json")
        submitted = await asyncio.to_thread(
            subprocess.run,
            msgq_command("submit", sample, "--wait", "--timeout", "30"),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "no worker" not in submitted.stderr
        job_id = orjson.loads(submitted.stdout)["id"]
        async with httpx.AsyncClient(base_url=api[1]) as http:
            form = await http.get("/ui/login")
            token = re.search(r'name="login_token" value="([^"]+)"', form.text)
            assert token is not None
            login = await http.post("/ui/login", data={"login_token": token[1], "api_key": key[1]})
            cookie = login.cookies.get(COOKIE)
            assert login.status_code == 303 and cookie
            page = await http.get("/ui/jobs", headers={"cookie": f"{COOKIE}={cookie}"})
        assert page.status_code == 200 and job_id in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.wait()


async def test_ctrl_c_lets_workers_release_in_flight_jobs_before_the_simulator_stops(
    tmp_path: Path,
) -> None:
    """A call in flight at Ctrl-C: the worker (1 s grace) puts the job back to `queued` with
    the attempt refunded, before the simulator and Redis stop (the data survives on disk)."""
    proc, text = await start_dev(tmp_path, MSGQ_SIM_LATENCY_MS="20000", MSGQ_SHUTDOWN_GRACE_S="1")
    match = re.search(r"REDIS_URL=(\S+)", text)
    assert match is not None
    async with Client.from_url(match[1]) as client:
        job = await client.submit(orjson.loads((SAMPLES / "requests" / "text.json").read_bytes()))

        async def in_flight() -> bool:
            return (await client.get(job.id)).status is JobStatus.IN_PROGRESS

        await eventually(in_flight)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(40):
        assert await proc.wait() == 0
    with EmbeddedRedis(tmp_path / ".msgq" / "redis") as again:
        async with Client.from_url(again.url) as client:
            record = await client.get(job.id)
    assert (record.status, record.attempts, record.error) == (JobStatus.QUEUED, 0, None)


async def test_dev_fails_clearly_when_its_port_is_taken(tmp_path: Path) -> None:
    """A taken port is an error naming it and the option to change it, never a quiet move."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = await asyncio.to_thread(
            subprocess.run,
            msgq_command("dev", "--redis-port", str(port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert f"port {port} (Redis) is in use" in done.stderr and "--redis-port" in done.stderr


def test_demo_finds_its_samples() -> None:
    """`make demo` reads the bundled requests and images from the checkout."""
    from msgq.dev.demo import SAMPLES, sample_requests

    assert set(sample_requests()) >= {"text", "prefill"}
    assert any((SAMPLES / "images").iterdir())


async def stop_dev(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0


def cli_here(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `msgq` command run beside `msgq dev`, with REDIS_URL unset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    return subprocess.run(
        msgq_command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


async def test_a_data_dir_is_found_and_the_key_survives_a_restart(tmp_path: Path) -> None:
    """`msgq dev --data-dir D`: commands run in the same directory find it; the generated key
    is kept in D and is the same after a restart, and the banner says how to pin one."""
    proc, text = await start_dev(tmp_path, "--data-dir", "D")
    try:
        key = re.search(r"x-api-key: (msgq-dev-\w+), kept in D/api-key; MSGQ_API_KEYS=", text)
        assert key is not None, text
        sample = str(SAMPLES / "requests" / "text.json")
        done = await asyncio.to_thread(cli_here, tmp_path, "submit", sample, "--wait")
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["status"] == "succeeded"
    finally:
        await stop_dev(proc)
    assert not (tmp_path / ".msgq" / "dev.env").exists()
    proc, again = await start_dev(tmp_path, "--data-dir", "D")
    await stop_dev(proc)
    assert f"x-api-key: {key[1]}," in again


async def test_with_msgq_api_keys_the_banner_names_where_the_keys_are(tmp_path: Path) -> None:
    """MSGQ_API_KEYS set: no key is generated, and the banner says which setting holds them
    (it read "sign in with from MSGQ_API_KEYS")."""
    proc, text = await start_dev(tmp_path, MSGQ_API_KEYS="team:key-team-0123456789")
    await stop_dev(proc)
    assert "x-api-key: a key of MSGQ_API_KEYS" in text
    assert "with from" not in text
    assert not (tmp_path / ".msgq" / "api-key").exists()


async def test_webhooks_work_out_of_the_box(tmp_path: Path, receiver: Receiver) -> None:
    """`msgq dev` provisions a webhook secret in its data dir and says how to verify; a job
    sent with the banner's key and a loopback callback (allowed) is delivered, signed with
    the secret the banner shows for that key's tenant."""
    proc, text = await start_dev(tmp_path, MSGQ_WEBHOOK_ALLOW="127.0.0.1")
    try:
        assert "webhooks   signed with the secret in .msgq/webhook-secret" in text
        shown = re.search(r"the key above \(tenant dev\): (whsec_\S+)", text)
        assert shown is not None, text
        secret = shown[1]
        key = re.search(r"x-api-key: (msgq-dev-\w+)", text)
        api = re.search(r"HTTP API   (\S+)", text)
        assert key is not None and api is not None
        request = orjson.loads((SAMPLES / "requests" / "text.json").read_bytes())
        async with httpx.AsyncClient(base_url=api[1], headers={"x-api-key": key[1]}) as http:
            made = await http.post(
                "/v1/jobs", json={"request": request, "callback_url": receiver.url}
            )
        assert made.status_code == 202, made.text
        await eventually(lambda: _count_is(receiver, 1), timeout_s=30)
    finally:
        await stop_dev(proc)
    assert verified(receiver.requests[0], secret)["status"] == "succeeded"


async def test_dev_says_loudly_that_the_api_refuses_its_key(tmp_path: Path) -> None:
    """ANTHROPIC_API_KEY set (here to a key the API refuses): the banner says the real API
    answers and is billed, and warns that it refused the key, instead of silently leaving
    the simulator."""
    with simulator_on_free_port("--api-key", "sk-ant-the-right-one") as api:
        proc, text = await start_dev(tmp_path, ANTHROPIC_API_KEY="foo", ANTHROPIC_BASE_URL=api)
        await stop_dev(proc)
    assert f"upstream   THE ANTHROPIC API at {api} with ANTHROPIC_API_KEY" in text
    assert "every job is billed" in text
    assert f"WARNING    {api} refused ANTHROPIC_API_KEY: 401 authentication_error" in text


async def test_the_terminal_shows_the_banner_and_the_log_file_the_services_lines(
    tmp_path: Path,
) -> None:
    """While a job runs, the terminal holds the banner alone, as the README shows it (the
    worker's and API's log lines were mixed into it); they are in DATA_DIR/dev.log, which the
    banner names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    ports = [str(p) for p in free_ports(3)]
    args = ["--redis-port", ports[0], "--api-port", ports[1], "--sim-port", ports[2]]
    proc = await asyncio.create_subprocess_exec(
        *msgq_command("dev", *args),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not lines or "Ctrl-C" not in lines[-1]:
            lines.append((await proc.stdout.readline()).decode())
    banner = "".join(lines)
    assert "  logs       .msgq/dev.log  (the workers', the API's and the simulator's)" in banner
    url = re.search(r"REDIS_URL=(\S+)", banner)
    assert url is not None
    async with Client.from_url(url[1]) as client:
        job = await client.submit(orjson.loads((SAMPLES / "requests" / "text.json").read_bytes()))
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(40):
        rest = (await proc.stdout.read()).decode()
        assert await proc.wait() == 0
    assert rest == "msgq dev: stopping the API, the workers, the simulator, then Redis\n"
    log = (tmp_path / ".msgq" / "dev.log").read_text()
    assert '"event": "worker.started"' in log and '"event": "job.finished"' in log


async def test_ctrl_c_in_a_terminal_stores_every_call_in_flight_and_sends_none_twice(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group. With 4 calls in
    flight (3 s each), `msgq dev` alone decides the order: the workers finish and store all 4
    (Redis still answering) before the simulator and Redis stop. After a restart every job has
    succeeded in one attempt: nothing is sent again. (Before, Redis shared the group and
    stopped first: the 4 answers, paid for, could not be stored and were sent again.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    ports = [str(p) for p in free_ports(3)]
    args = ["--redis-port", ports[0], "--api-port", ports[1], "--sim-port", ports[2]]
    proc = await asyncio.create_subprocess_exec(
        *msgq_command("dev", *args),
        env={**env, "MSGQ_SIM_LATENCY_MS": "3000", "MSGQ_SHUTDOWN_GRACE_S": "30"},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # the group a terminal would put it in, apart from pytest's
    )
    try:
        assert proc.stdout is not None
        banner = ""
        async with asyncio.timeout(30):
            while "Ctrl-C" not in banner:
                line = (await proc.stdout.readline()).decode()
                assert line, "msgq dev ended before its banner"
                banner += line
        url = f"redis://127.0.0.1:{ports[0]}/0"
        request = orjson.loads((SAMPLES / "requests" / "text.json").read_bytes())
        async with Client.from_url(url) as client:
            jobs = [await client.submit(request) for _ in range(4)]

            async def all_in_flight() -> bool:
                records = [await client.get(job.id) for job in jobs]
                return all(r.status is JobStatus.IN_PROGRESS for r in records)

            await eventually(all_in_flight, timeout_s=20)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    with EmbeddedRedis(tmp_path / ".msgq" / "redis") as again:
        async with Client.from_url(again.url) as client:
            records = [await client.get(job.id) for job in jobs]
    assert [(r.status, r.attempts) for r in records] == [(JobStatus.SUCCEEDED, 1)] * 4
