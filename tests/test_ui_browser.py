"""The dashboard in a real browser: Debian's headless Chromium driven by selenium, against a real
`msgq api` and `msgq worker` (subprocesses), the suite's Redis and the simulator.

Without chromium and chromium-driver these tests skip with one line; with MSGQ_REQUIRE_BROWSER=1
(set by .ci/run) that is a failure instead. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis as redis_sync

from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command, wait_http
from tests.conftest import KEY_A, KEY_B, KEYS, TEST_API_KEY, Sim, stop_process
from tests.images import image_block, image_bytes

REQUIRED = os.environ.get("MSGQ_REQUIRE_BROWSER") == "1"  # read at import: fixtures clear MSGQ_*
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ADMIN_KEY = "admin-key-browser-0123456789"
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_S = 15


def _unavailable() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "no chromium/chromedriver: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    return None


@pytest.fixture(scope="module")
def stack(redis_server: str, simulator_server: str) -> Iterator[dict[str, str]]:
    """`msgq api` and `msgq worker` as subprocesses, sharing the suite's Redis and simulator."""
    redis_sync.Redis.from_url(redis_server).flushdb()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MSGQ_", "ANTHROPIC_")) and k != "REDIS_URL"
    }
    env |= {
        "REDIS_URL": redis_server,
        "ANTHROPIC_API_KEY": TEST_API_KEY,
        "ANTHROPIC_BASE_URL": simulator_server,
        "MSGQ_API_KEYS": f"tenant-a:{KEY_A},tenant-b:{KEY_B}",
        "MSGQ_ADMIN_KEYS": ADMIN_KEY,
        "MSGQ_POLL_DELAY_S": "0.01",
        "MSGQ_BACKOFF_BASE_S": "0.05",
        "MSGQ_BACKOFF_MAX_S": "0.2",
        "MSGQ_PAUSE_RECHECK_S": "0.2",
        "MSGQ_LOG_FORMAT": "json",
        "MSGQ_RATE_LIMITS": '{"haiku": {"rpm": 1000, "itpm": 400000, "otpm": 80000}}',
    }
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="msgq-ui-"))
    with (logs / "api.log").open("wb") as api_log, (logs / "worker.log").open("wb") as w_log:
        api = subprocess.Popen(msgq_command("api", "--port", str(port)), env=env, stderr=api_log)
        worker = subprocess.Popen(msgq_command("worker"), env=env, stderr=w_log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", process=api)
        yield {"url": url, "redis": redis_server, "sim": simulator_server}
    finally:
        stop_process(worker)
        stop_process(api)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium from Debian, or a skip (a failure where the browser is required)."""
    reason = _unavailable()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"browser tests required (MSGQ_REQUIRE_BROWSER=1): {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    profile = tempfile.mkdtemp(prefix="msgq-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    ARTIFACTS.mkdir(exist_ok=True)
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The browser, the API and Redis, as one test sees them."""

    def __init__(self, driver: Any, stack: dict[str, str], sim: Sim) -> None:
        self.driver, self.url, self.sim = driver, stack["url"], sim
        self.redis = redis_sync.Redis.from_url(stack["redis"])

    def go(self, path: str) -> None:
        self.driver.get(self.url + path)

    def until(self, check: Callable[[Any], Any], timeout_s: float = WAIT_S) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # htmx swaps fragments under the test: an element found may be replaced a moment later.
        # Chromium says so as a stale element, or (reading a swapped node's text) as a generic
        # error that the node "does not belong to the document": both mean look again.
        def swapped_is_not_yet(driver: Any) -> Any:
            try:
                return check(driver)
            except WebDriverException as exc:
                if "does not belong to the document" in str(exc.msg):
                    return False
                raise

        ignored = (NoSuchElementException, StaleElementReferenceException)
        wait = WebDriverWait(self.driver, timeout_s, 0.05, ignored_exceptions=ignored)
        return wait.until(swapped_is_not_yet)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def text(self) -> str:
        return str(self.css("body").text)

    def sign_in(self, key: str) -> None:
        self.driver.delete_all_cookies()
        self.go("/ui/login")
        self.css("#api_key").send_keys(key)
        self.css("form[action='/ui/login'] button").click()
        self.until(lambda d: d.current_url.rstrip("/").endswith("/ui"))

    def shot(self, name: str) -> None:
        """The whole page, not just the window (Chromium's DevTools capture)."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip}
        )
        (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def submit(self, key: str, request: dict[str, Any], **extra: Any) -> str:
        """POST /v1/jobs as a tenant; the internal ID (tenant:id) the dashboard links by."""
        response = httpx.post(
            f"{self.url}/v1/jobs",
            json={"request": request, **extra},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
        response.raise_for_status()
        tenant = "tenant-a" if key == KEY_A else "tenant-b"
        return f"{tenant}:{response.json()['id']}"

    def status(self, job_id: str) -> str:
        raw = self.redis.get(KEYS.record_key(job_id))
        return "" if raw is None else str(orjson.loads(raw)["status"])  # type: ignore[arg-type]


@pytest.fixture
def page(driver: Any, stack: dict[str, str], sim: Sim) -> Iterator[Page]:
    p = Page(driver, stack, sim)
    yield p
    p.redis.delete(KEYS.pause_key)
    p.redis.close()


def picture_request(prompt: str) -> dict[str, Any]:
    content = [image_block(image_bytes(size=(640, 480))), {"type": "text", "text": prompt}]
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 60,
        "messages": [{"role": "user", "content": content}],
    }


def text_request(prompt: str) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 30,
        "messages": [{"role": "user", "content": prompt}],
    }


def test_sign_in_shows_the_overview(page: Page) -> None:
    """Signing in with the admin key leads to the overview; it is usable at phone width."""
    page.go("/ui")
    page.until(lambda d: "/ui/login" in d.current_url)
    page.sign_in(ADMIN_KEY)
    assert "admin" in page.css(".who").text and "Active jobs" in page.text()
    page.driver.set_window_size(390, 844)
    try:
        page.go("/ui")
        width = page.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling: wide tables scroll inside their boxes
        page.shot("overview-phone")
    finally:
        page.driver.set_window_size(1280, 800)


def test_a_submitted_job_appears_and_finishes_without_reload(page: Page) -> None:
    """The jobs list shows a new job, then its end, by polling fragments: the page never loads
    again. The job page shows its thumbnail and result."""
    page.sign_in(ADMIN_KEY)
    page.go("/ui/jobs")
    page.driver.execute_script("window.stillHere = 42")
    page.sim.script({"delay_s": 2.5})  # long enough to see it running
    job_id = page.submit(KEY_A, picture_request("Describe this picture."))
    row = f"tr[id='row-{job_id}']"
    page.until(lambda d: page.css(row).get_attribute("data-status") in ("queued", "in_progress"))
    page.until(lambda d: page.css(row).get_attribute("data-status") == "succeeded")
    assert page.driver.execute_script("return window.stillHere") == 42
    page.shot("jobs")


def test_the_job_page_follows_a_job_to_its_result(page: Page) -> None:
    """While it runs the page shows the request with its thumbnail; when it ends the page
    shows the result without the user reloading."""
    page.sim.script({"delay_s": 2.5})
    job_id = page.submit(KEY_A, picture_request("Describe this picture."), metadata={"user": "u1"})
    page.sign_in(KEY_A)
    page.go(f"/ui/jobs/{quote(job_id, safe='')}")
    assert page.css("img.thumb").get_attribute("src").startswith("data:image/png;base64,")
    page.shot("job-running")
    page.until(lambda d: page.css("#job-status").text == "succeeded" and page.css("#result").text)
    page.shot("job")


def test_cancel_a_queued_job(page: Page) -> None:
    """With the fleet paused a job stays queued; its Cancel button cancels it; the admin's
    Resume button lifts the pause."""
    page.redis.set(KEYS.pause_key, "spend limit reached (test)")
    page.sign_in(ADMIN_KEY)
    job_id = page.submit(KEY_A, text_request("wait for me"))
    page.go(f"/ui/jobs/{quote(job_id, safe='')}")
    assert page.css("#job-status").text == "queued"
    page.css("#cancel").click()
    page.until(lambda d: page.css("#job-status").text == "canceled")
    assert page.status(job_id) == "canceled"
    page.go("/ui")
    page.css("#resume").click()
    page.until(lambda d: page.css("#not-paused"))
    assert not page.redis.exists(KEYS.pause_key)


def test_failed_jobs_retried_as_a_group(page: Page) -> None:
    """Three jobs the API refuses (401: a key to fix, so a retry can help) fail; the Retry on
    their group runs them again."""
    refusal = {"status": 401, "message": "simulated refusal for the group"}
    page.sim.script(refusal, refusal, refusal)
    ids = [page.submit(KEY_A, text_request(f"group {n}")) for n in range(3)]
    page.until(lambda d: all(page.status(i) == "failed" for i in ids))
    page.sign_in(ADMIN_KEY)
    page.go("/ui/failures")
    group = page.css("tr[id^='group-']")
    assert "simulated refusal for the group" in group.text and "3" in group.text
    page.shot("failures")
    group.find_element("css selector", "button").click()
    page.until(lambda d: "Requeued 3 job(s)" in page.text())
    page.until(lambda d: all(page.status(i) == "succeeded" for i in ids))


def test_a_tenant_cannot_see_another_tenants_job(page: Page) -> None:
    """Tenant B gets "not found" for tenant A's job page, and no row for it in the list."""
    job_id = page.submit(KEY_A, text_request("tenant A's secret"))
    page.sign_in(KEY_B)
    page.go(f"/ui/jobs/{quote(job_id, safe='')}")
    assert "Not found" in page.text() and "tenant A's secret" not in page.driver.page_source
    page.go("/ui/jobs")
    assert job_id not in page.driver.page_source


def test_an_action_without_the_csrf_token_is_refused(page: Page) -> None:
    """A cancel form stripped of its CSRF field is answered 403 and the job is untouched."""
    page.redis.set(KEYS.pause_key, "spend limit reached (test)")
    job_id = page.submit(KEY_A, text_request("keep me"))
    page.sign_in(KEY_A)
    page.go(f"/ui/jobs/{quote(job_id, safe='')}")
    page.driver.execute_script("document.querySelector('#cancel-form [name=csrf_token]').remove()")
    page.css("#cancel").click()
    page.until(lambda d: "Refused" in page.text())
    assert "CSRF" in page.text() and page.status(job_id) == "queued"


def test_batches_and_results_download(page: Page) -> None:
    """A batch's page shows its progress; the results link downloads its JSONL."""
    items = [{"custom_id": f"b{n}", "params": text_request(f"batch {n}")} for n in range(3)]
    created = httpx.post(
        f"{page.url}/v1/messages/batches",
        json={"requests": items},
        headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
    )
    batch_id = created.json()["id"]
    page.sign_in(KEY_A)
    page.go(f"/ui/batches/{batch_id}")
    page.until(lambda d: _reloaded(page, "Download results"))
    page.shot("batch")
    page.go("/ui/batches")
    assert batch_id in page.text()
    page.shot("batches")
    body = _download(page, batch_id)
    assert sorted(orjson.loads(line)["custom_id"] for line in body.splitlines()) == [
        "b0",
        "b1",
        "b2",
    ]


def _reloaded(page: Page, text: str) -> bool:
    """The batch page does not poll: reload it until `text` shows."""
    page.driver.refresh()
    return text in page.text()


def _download(page: Page, batch_id: str) -> str:
    """The results link fetched inside the page, with the session's cookie."""
    script = (
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.text()).then(done);"
    )
    return str(page.driver.execute_async_script(script, f"/ui/batches/{batch_id}/results"))


def test_the_overview_charts_the_run(page: Page) -> None:
    """After the run, the overview's chart and legend count what happened this hour, 429s and
    529s included, and the limiter's headroom is shown."""
    page.sim.script({"status": 529}, {"status": 429, "headers": {"retry-after": "0"}})
    job_id = page.submit(KEY_A, text_request("through a 529 and a 429"))
    page.until(lambda d: page.status(job_id) == "succeeded")
    page.sign_in(ADMIN_KEY)
    page.go("/ui")
    page.until(lambda d: "529 overloaded: 1 in the hour" in page.text())
    legend = page.css(".legend").text
    assert "429 rate limited: 1 in the hour" in legend and "succeeded: 0 in" not in legend
    assert "haiku" in page.css("#limits-h + .scroll").text
    page.shot("overview")
