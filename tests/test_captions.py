"""`msgq caption` end to end: images made here, a real worker, the simulator's view of them."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image
from redis.asyncio import Redis

from msgq.caption.output import CaptionLog
from msgq.caption.report import estimate
from msgq.caption.run import CaptionOptions, CaptionRun, Tally
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from tests.conftest import KEYS, Sim, StartWorker, eventually, zcard_parts

PROMPT = "Describe {name} in one sentence."


def save(
    path: Path,
    size: tuple[int, int] = (120, 80),
    colour: Any = (200, 40, 40),
    mode: str = "RGB",
    **kwargs: Any,
) -> Path:
    Image.new(mode, size, colour).save(path, **kwargs)
    return path


def rows(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


async def caption(settings: Settings, inputs: list[Path | str], out: Path, **kw: Any) -> Tally:
    options = CaptionOptions(inputs=[str(i) for i in inputs], prompt=PROMPT, out=out, **kw)
    log = CaptionLog(out)
    redis = connect(settings.redis_url)
    try:
        return await CaptionRun(redis, settings, options, log).run()
    finally:
        log.close()
        await redis.aclose()


def seen_media(sim: Sim) -> list[str]:
    return [r["body"]["messages"][0]["content"][0]["source"]["media_type"] for r in sim.requests()]


async def test_every_format_is_captioned_and_refused_ones_converted(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """JPEG, PNG with alpha, GIF, WebP, BMP and TIFF all succeed; BMP and TIFF are converted."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    save(folder / "a.jpg")
    save(folder / "b.png", mode="RGBA", colour=(0, 200, 0, 100))
    save(folder / "c.gif", colour=(40, 80, 200))
    save(folder / "d.webp")
    save(folder / "nested" / "e.bmp")
    save(folder / "nested" / "f.tiff")
    (folder / "notes.txt").write_text("not an image, and not walked into")
    await start_worker()
    tally = await caption(settings, [folder], tmp_path / "out.jsonl", sidecar=True)
    assert (tally.done, tally.failed) == (6, 0)
    assert sorted(seen_media(sim)) == sorted(
        ["image/jpeg", "image/png", "image/gif", "image/webp", "image/jpeg", "image/jpeg"]
    )
    by_name = {Path(r["path"]).name: r for r in rows(tmp_path / "out.jsonl")}
    assert by_name["e.bmp"]["caption"].startswith("A 120x80 JPEG image, mostly red")
    assert (folder / "a.txt").read_text().strip() == by_name["a.jpg"]["caption"]
    assert (folder / "nested" / "f.txt").exists()


async def test_exif_orientation_is_applied(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A portrait phone photo (stored 400x200, EXIF orientation 6) arrives upright, 200x400."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = save(tmp_path / "phone.jpg", size=(400, 200), exif=exif.tobytes())
    await start_worker()
    await caption(settings, [photo], tmp_path / "out.jsonl")
    (row,) = rows(tmp_path / "out.jsonl")
    assert row["caption"].startswith("A 200x400 JPEG image")


async def test_large_images_are_downscaled_and_fit_the_byte_limit(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """6000x4000 arrives within 1568 px; a noisy PNG over 5 MB is re-encoded to fit."""
    big = save(tmp_path / "big.jpg", size=(6000, 4000), colour=(40, 80, 200))
    noisy = tmp_path / "noisy.png"
    Image.frombytes("RGB", (1500, 1500), os.urandom(1500 * 1500 * 3)).save(noisy)
    assert noisy.stat().st_size > 5 * 1024 * 1024
    await start_worker()
    await caption(settings, [big, noisy], tmp_path / "out.jsonl")
    for request in sim.requests():
        source = request["body"]["messages"][0]["content"][0]["source"]
        import base64

        raw = base64.b64decode(source["data"])
        assert len(raw) <= 5 * 1024 * 1024
        with Image.open(io.BytesIO(raw)) as img:
            assert max(img.size) <= 1568
    assert {r["status"] for r in rows(tmp_path / "out.jsonl")} == {"succeeded"}


async def test_corrupt_and_empty_files_fail_with_reasons(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Corrupt and zero-byte files become failed rows with the reason; the others succeed."""
    good = save(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:60])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    await start_worker()
    tally = await caption(settings, [tmp_path], tmp_path / "out.jsonl")
    assert (tally.done, tally.failed) == (1, 2)
    errors = {Path(r["path"]).name: r["error"] for r in rows(tmp_path / "out.jsonl")}
    assert errors["good.png"] is None
    assert "truncated" in errors["corrupt.jpg"] or "corrupt" in errors["corrupt.jpg"]
    assert errors["empty.png"] == "empty file"
    assert sim.received == 1


async def test_dry_run_estimate_is_within_ten_percent(
    settings: Settings,
    redis: Redis,
    tmp_path: Path,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """The dry run's input-token estimate is within 10% of what the simulator reports."""
    for i, size in enumerate([(640, 480), (1920, 1080), (300, 300), (4000, 3000)]):
        save(tmp_path / f"p{i}.jpg", size=size)
    options = CaptionOptions(inputs=[str(tmp_path)], prompt=PROMPT, out=tmp_path / "o.jsonl")
    guess = estimate(options, 5 * 1024 * 1024)
    assert guess["images"] == 4 and sim.received == 0 and await redis.dbsize() == 0
    await start_worker()
    tally = await caption(settings, [tmp_path], tmp_path / "o.jsonl")
    assert abs(guess["input_tokens"] - tally.input_tokens) <= 0.1 * tally.input_tokens


async def test_window_bounds_what_redis_holds(
    redis: Redis,
    tmp_path: Path,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """600 tiny images (twelve windows' worth) with a window of 50: the queues (arq's and the
    scheduler's) never hold more than 50 jobs."""
    for i in range(600):
        save(tmp_path / f"t{i:04}.png", size=(8, 8), colour=(i % 256, 0, 0))
    await start_worker(settings.model_copy(update={"max_jobs": 32}))
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            held = await zcard_parts(redis, lambda k: k.queue) + await redis.hlen(KEYS.sched_where)
            peak = max(peak, held)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    tally = await caption(settings, [tmp_path], tmp_path / "out.jsonl", window=50)
    done.set()
    await sampler
    assert tally.done == 600 and 0 < peak <= 50


async def test_resume_after_kill_captions_each_image_once(
    tmp_path: Path, settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Kill the producer partway, run again: every image is captioned exactly once."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        save(photos / f"p{i:02}.png", colour=(i * 6, 100, 0))
    sim.script(*[{"delay_s": 0.05}] * 40)
    await start_worker(settings.model_copy(update={"max_jobs": 2}))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    args = msgq_command(
        "caption", str(photos), "--prompt", PROMPT, "--out", str(out), "--window", "4"
    )
    first = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    async def some_rows() -> bool:
        return out.exists() and len(out.read_bytes().splitlines()) >= 5

    await eventually(some_rows, timeout_s=30)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    again = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr
    paths = [r["path"] for r in rows(out)]
    assert sorted(set(paths)) == sorted(str(p) for p in photos.glob("*.png"))
    assert len(paths) == 40  # no image written twice
    assert sim.received == 40  # and none sent twice


@pytest.mark.parametrize("ext", [".txt", ".caption"])
async def test_manifest_and_sidecar_extension(
    settings: Settings,
    ext: str,
    tmp_path: Path,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """A CSV manifest with a path column and a URL; --sidecar-ext picks the extension."""
    image = save(tmp_path / "one.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\none.png,x\nhttps://example.com/cat.jpg,y\n")
    await start_worker()
    tally = await caption(
        settings, [manifest], tmp_path / "out.jsonl", sidecar=True, sidecar_ext=ext
    )
    assert tally.done == 2
    sources = sorted(
        r["body"]["messages"][0]["content"][0]["source"]["type"] for r in sim.requests()
    )
    assert sources == ["base64", "url"]
    assert image.with_suffix(ext).read_text().startswith("A 120x80 PNG image")


async def test_sidecars_never_replace_a_users_file_nor_collide(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """cat.jpg and cat.png get cat.jpg.txt and cat.png.txt; a user's notes.txt beside notes.png
    is left alone (a failed row says why, nothing is sent) until --force-sidecar."""
    photos = tmp_path / "photos"
    photos.mkdir()
    save(photos / "cat.jpg")
    save(photos / "cat.png", colour=(0, 0, 200))
    save(photos / "dog.jpg", colour=(0, 200, 0))
    save(photos / "notes.png", colour=(90, 90, 90))
    (photos / "notes.txt").write_text("my own notes")
    out = tmp_path / "out.jsonl"
    await start_worker()
    tally = await caption(settings, [photos], out, sidecar=True)
    assert (tally.done, tally.failed) == (3, 1) and sim.received == 3
    assert (photos / "cat.jpg.txt").read_text().startswith("A 120x80 JPEG image")
    assert (photos / "cat.png.txt").read_text().startswith("A 120x80 PNG image")
    assert (photos / "dog.txt").exists() and not (photos / "cat.txt").exists()
    assert (photos / "notes.txt").read_text() == "my own notes"
    refused = next(r for r in rows(out) if r["path"].endswith("notes.png"))
    assert "--force-sidecar" in refused["error"]
    # msgq may rewrite its own sidecars (a new prompt); the user's file still needs --force.
    again = await caption(settings, [photos], out, sidecar=True, retry_failed=True, max_tokens=150)
    assert (again.done, again.failed) == (3, 1)  # dog.txt and both cats rewritten
    assert (photos / "notes.txt").read_text() == "my own notes"
    forced = await caption(
        settings, [photos], out, sidecar=True, force_sidecar=True, retry_failed=True
    )
    assert forced.done == 1 and (photos / "notes.txt").read_text().startswith("A 120x80 PNG")


async def test_rerun_reports_earlier_failures_until_retried(
    settings: Settings, tmp_path: Path, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A rerun counts earlier failed rows as failures (exit 1, says --retry-failed), not as
    done; --retry-failed re-runs them and the run ends clean."""
    photos = tmp_path / "photos"
    photos.mkdir()
    save(photos / "a.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "out.jsonl"
    # 401: fixed by a new key, so a retry can help (a 400 is permanent: not retried)
    sim.script({"status": 401, "message": "no"})
    await start_worker()
    first = await caption(settings, [photos], out)
    assert (first.done, first.failed) == (0, 2)
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    args = msgq_command("caption", str(photos), "--prompt", PROMPT, "--out", str(out))
    rerun = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True)
    assert rerun.returncode == 1 and "2 failed in an earlier run" in rerun.stderr
    assert "--retry-failed" in rerun.stderr and sim.received == 1
    retried = await asyncio.to_thread(
        subprocess.run, [*args, "--retry-failed"], env=env, capture_output=True, text=True
    )
    assert retried.returncode == 1  # broken.png is still broken
    assert "1 image(s) failed in this run" in retried.stderr
    assert [r["status"] for r in rows(out) if r["path"].endswith("a.png")][-1] == "succeeded"
    assert sim.received == 2


async def test_ctrl_c_summarises_and_says_how_to_cancel(
    tmp_path: Path, settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """SIGINT mid-run: exit 130 with the summary, the jobs left in the fleet and the command
    that cancels them; that command cancels them. No --prompt: the documented default."""
    from msgq.caption.work import DEFAULT_PROMPT

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        save(photos / f"p{i:02}.png", colour=(i * 20, 0, 0))
    sim.script(*[{"delay_s": 0.3}] * 12)
    await start_worker(settings.model_copy(update={"max_jobs": 1}))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    args = msgq_command("caption", str(photos), "--out", str(out), "--window", "6")
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    async def a_row() -> bool:
        return out.exists() and len(out.read_bytes().splitlines()) >= 1

    await eventually(a_row, timeout_s=30)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, stderr
    assert "msgq caption" in stdout.decode()  # the summary table
    message = stderr.decode()
    assert "still queued or running" in message
    assert f"msgq caption --cancel --out {out}" in message
    left = (tmp_path / "out.jsonl.pending").read_text().split()
    assert left
    cancel = await asyncio.to_thread(
        subprocess.run,
        msgq_command("caption", "--cancel", "--out", str(out)),
        env=env,
        capture_output=True,
        text=True,
    )
    assert cancel.returncode == 0, cancel.stderr
    records = [await client.get(job_id) for job_id in left]
    assert any(r.status.value == "canceled" for r in records)
    assert all(r.status.terminal or r.cancel_requested for r in records)
    assert sim.requests()[0]["body"]["messages"][0]["content"][1]["text"] == DEFAULT_PROMPT

    async def all_ended() -> bool:
        return all([(await client.get(job_id)).status.terminal for job_id in left])

    await eventually(all_ended, timeout_s=30)
    rerun = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr  # the canceled images were sent again
    latest = {r["path"]: r["status"] for r in rows(out)}
    assert len(latest) == 12 and set(latest.values()) == {"succeeded"}


def test_plain_progress_has_a_total_and_eta_on_one_line(tmp_path: Path) -> None:
    """Off a terminal: the total is counted ahead (no image read) and each update is one
    unwrapped line with done/total and an ETA."""
    from msgq.caption.inputs import count_items
    from msgq.caption.report import Display

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"not even an image")
    (tmp_path / "list.txt").write_text("a.png\n# comment\nhttps://example.com/b.jpg\n")
    total = count_items([str(tmp_path), str(tmp_path / "list.txt")])
    assert total == 5
    stream = io.StringIO()
    with Display(total=40, stream=stream, interval_s=0) as display:
        display.update(Tally(done=5, failed=1, input_tokens=123_456, started=0.0))
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("captions 6/40:") for line in lines)
    assert all("eta " in line and "eta ?" not in line for line in lines)
    assert len(lines[0]) > 80  # not wrapped at a console width


def test_dry_run_names_unreadable_files(tmp_path: Path) -> None:
    """The dry run lists which files it could not read, with the reason."""
    save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    options = CaptionOptions(inputs=[str(tmp_path)], prompt=PROMPT, out=tmp_path / "o.jsonl")
    guess = estimate(options, 5 * 1024 * 1024)
    assert guess["unreadable"] == 1
    assert guess["unreadable_files"][0].startswith(str(tmp_path / "bad.jpg"))


@pytest.mark.parametrize("window", [1, 4])
async def test_two_paths_with_the_same_bytes_are_one_job_and_two_rows(
    window: int, tmp_path: Path, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """a/x.png and b/y.png hold the same bytes: one call, two rows with the caption, both
    sidecars; the usage and cost are in one row and counted once (the other row names the path
    it shares the job with), whatever the window; a rerun skips both; a run into a new output
    file writes both rows again without a call, still counting the cost once."""
    photos = tmp_path / "photos"
    for folder in ("a", "b", "c"):
        (photos / folder).mkdir(parents=True)
    save(photos / "a" / "x.png")
    (photos / "b" / "y.png").write_bytes((photos / "a" / "x.png").read_bytes())
    save(photos / "c" / "z.png", colour=(10, 200, 10))
    await start_worker()

    async def run(out: Path) -> Tally:
        options = CaptionOptions(inputs=[str(photos)], out=out, sidecar=True, window=window)
        log = CaptionLog(out)
        redis = connect(settings.redis_url)
        try:
            return await CaptionRun(redis, settings, options, log).run()
        finally:
            log.close()
            await redis.aclose()

    def check(out: Path, tally: Tally) -> None:
        by_path = {Path(r["path"]).name: r for r in rows(out)}
        assert sorted(by_path) == ["x.png", "y.png", "z.png"]
        x, y = by_path["x.png"], by_path["y.png"]
        assert x["job_id"] == y["job_id"] and x["caption"] == y["caption"] is not None
        assert {x["status"], y["status"]} == {"succeeded"}
        owner, sharer = (x, y) if "shares_job_of" in y else (y, x)
        assert sharer["shares_job_of"] == owner["path"] and "shares_job_of" not in owner
        assert sharer["usage"] is None and sharer["cost_usd"] == 0.0
        assert owner["usage"]["input_tokens"] > 0 and owner["cost_usd"] > 0
        paid = [r for r in by_path.values() if r["usage"]]
        assert tally.done == 3
        assert tally.input_tokens == sum(r["usage"]["input_tokens"] for r in paid)
        assert tally.cost_usd == pytest.approx(sum(r["cost_usd"] for r in paid))
        for name in ("a/x", "b/y"):
            assert (photos / f"{name}.txt").read_text() == x["caption"] + "\n"

    out = tmp_path / "out.jsonl"
    check(out, await run(out))
    assert sim.received == 2
    again = await run(out)
    assert (again.skipped, again.done, len(rows(out))) == (3, 0, 3)
    for name in ("a/x.txt", "b/y.txt"):
        (photos / name).unlink()
    fresh = tmp_path / "fresh.jsonl"
    check(fresh, await run(fresh))
    assert sim.received == 2
