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

from tests.conftest import Sim, StartWorker, eventually
from worker.caption.output import CaptionLog
from worker.caption.report import estimate
from worker.caption.run import CaptionOptions, CaptionRun, Tally
from worker.client import Client
from worker.dev.stack import msgq_command
from worker.settings import Settings

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
    redis = Redis.from_url(settings.redis_url)
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
    """2,000 tiny images with a window of 50: the queue never holds more than 50 jobs."""
    for i in range(2000):
        save(tmp_path / f"t{i:04}.png", size=(8, 8), colour=(i % 256, 0, 0))
    await start_worker(settings.model_copy(update={"max_jobs": 32}))
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await redis.zcard(settings.queue_name))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    tally = await caption(settings, [tmp_path], tmp_path / "out.jsonl", window=50)
    done.set()
    await sampler
    assert tally.done == 2000 and 0 < peak <= 50


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
