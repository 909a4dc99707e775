"""The dashboard in real headless Chromium (Debian's package, driven by Playwright): the page
lists a running task, the Abort button aborts it, the row shows ABORTED."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest

from .conftest import wait_until
from .test_web_servers import uvicorn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE = os.environ.get("AIOABORT_REQUIRE_BROWSER") == "1"


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("no chromium on the PATH and AIOABORT_REQUIRE_BROWSER=1")
        pytest.skip("no chromium on the PATH (apt-get install chromium)")
    return CHROMIUM


async def test_dashboard_aborts_a_running_task(
    chromium: str, sqlite_url: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    async with uvicorn(sqlite_url) as base, httpx.AsyncClient(base_url=base) as client:
        job = (await client.post("/reports", params={"sections": 2000, "seconds": 0.05})).json()[
            "id"
        ]
        for seconds in (0.02, 0.03):  # a few more, for a realistic page
            await client.post("/reports", params={"sections": 2000, "seconds": seconds})
        done = (await client.post("/reports", params={"sections": 1, "seconds": 0.01})).json()["id"]

        async def finished() -> bool:
            state: str = (await client.get(f"/reports/{done}")).json()["state"]
            return state == "SUCCESS"

        await wait_until(finished, timeout=30)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 420})
                await page.goto(f"{base}/aioabort/")
                row = page.locator(f'tr[data-task-id="{job}"]')
                await row.locator('td[data-state="STARTED"]').wait_for(timeout=15_000)
                # Only unfinished tasks get an Abort button.
                finished_row = page.locator(f'tr[data-task-id="{done}"]')
                await finished_row.locator('td[data-state="SUCCESS"]').wait_for(timeout=15_000)
                assert await finished_row.locator('button[data-action="abort"]').count() == 0
                page.once("dialog", lambda dialog: dialog.accept())
                await row.locator('button[data-action="abort"]').click()
                await row.locator('td[data-state="ABORTED"]').wait_for(timeout=15_000)
                assert "aborted from the dashboard" in await row.inner_text()
                screenshot = Path(os.environ.get("AIOABORT_SCREENSHOT", tmp_path / "dashboard.png"))
                await page.screenshot(path=str(screenshot), full_page=True)
                assert len(await asyncio.to_thread(screenshot.read_bytes)) > 10_000
            finally:
                await browser.close()
        record = (await client.get(f"/reports/{job}")).json()
    assert record["state"] == "ABORTED"
    assert record["reason"]["message"] == "aborted from the dashboard"


async def test_dashboard_says_when_access_is_denied(chromium: str, sqlite_url: str) -> None:
    """The example authorizes loopback only; the page explains a 403 instead of failing."""
    from playwright.async_api import async_playwright

    async with uvicorn(sqlite_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.route(
                "**/aioabort/tasks?*",
                lambda route: route.fulfill(
                    status=403, content_type="application/json", body='{"error": "forbidden"}'
                ),
            )
            await page.goto(f"{base}/aioabort/")
            await page.locator("#notice").filter(has_text="Access denied").wait_for(timeout=15_000)
        finally:
            await browser.close()
