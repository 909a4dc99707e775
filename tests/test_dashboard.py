"""The dashboard in real headless Chromium (Debian's package, driven by Playwright), served by
docs/examples/fastapi_app.py in a real uvicorn: the Abort button aborts a running task; with
0, 5, 500 and 10,000 tasks (200-character ids, 2,000-character reasons) the page holds its
layout at 1280 and 390 px; it pages and searches on the server, shows ids whole and copies
them, keeps a selection through live updates, and aborts a filter after a preview."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import aioabort
from aioabort import TaskState

from ._servers import fastapi_example
from .conftest import wait_until

if TYPE_CHECKING:
    from playwright.async_api import ViewportSize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE = os.environ.get("AIOABORT_REQUIRE_BROWSER") == "1"
#: Set to a directory (docs/images) to write the screenshots the docs show.
SCREENSHOTS = os.environ.get("AIOABORT_SCREENSHOTS")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDE: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
LONG_REASON = "why-" * 499 + "stop"  # 2,000 characters and no space to break at


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

    async with fastapi_example(sqlite_url) as base, httpx.AsyncClient(base_url=base) as client:
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
            browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
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

    async with fastapi_example(sqlite_url) as base, async_playwright() as pw:
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


async def test_the_operator_gives_the_reason(chromium: str, sqlite_url: str) -> None:
    """The Abort button asks for a reason, prefilled with the default; "Abort matching…" has
    a reason field of its own. What the operator types is the abort's recorded reason."""
    from playwright.async_api import Dialog, async_playwright

    made = await populate(sqlite_url, 5)  # two queued: one of bob's (a long id), one of alice's
    bob = next(i for i in made["queued"] if i not in made["alice"])
    asked: list[tuple[str, str]] = []

    async def answer(dialog: Dialog) -> None:
        asked.append((dialog.type, dialog.default_value))
        await dialog.accept("the customer cancelled the order")

    async with fastapi_example(sqlite_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page(viewport=WIDE)
            await page.goto(f"{base}/aioabort/")
            row = page.locator(f'tr[data-task-id="{bob}"]')
            page.once("dialog", answer)
            await row.locator('button[data-action="abort"]').click()
            await row.locator('td[data-state="ABORTED"]').wait_for(timeout=15_000)
            assert asked == [("prompt", "aborted from the dashboard")]

            await page.locator("#labels").fill("user=alice")
            bulk = page.locator("#bulk")
            await wait_until(bulk.is_enabled, timeout=15)
            await bulk.click()
            await page.locator("#confirm.open").wait_for()
            reason = page.locator("#confirm-reason")
            assert await reason.get_attribute("placeholder") == "aborted from the dashboard"
            await reason.fill("account closed")
            await page.locator("#confirm-yes").click()
            await page.locator("#notice", has_text="Aborted 1 task.").wait_for()
            await layout_holds(page)
        finally:
            await browser.close()
    async with aioabort.App(sqlite_url) as app:
        one = await app.handle(bob).record()
        matching = await app.handle(made["alice"][0]).record()
    assert one.state is TaskState.ABORTED and one.reason is not None
    assert one.reason.message == "the customer cancelled the order"
    assert matching.state is TaskState.ABORTED and matching.reason is not None
    assert matching.reason.message == "account closed"


def long_id(i: int) -> str:
    """Every seventh id is 200 characters with nowhere to break; the rest are short."""
    tail = f"-{i:05d}"
    return ("export/" + "a" * 200)[: 200 - len(tail)] + tail if i % 7 == 0 else f"task{tail}"


async def populate(url: str, n: int) -> dict[str, list[str]]:
    """``n`` tasks, oldest first: a third queued (labelled user=alice or bob), a third
    finished, a third aborted with a 2,000-character reason. Returns the ids by kind."""
    made: dict[str, list[str]] = {"queued": [], "finished": [], "aborted": [], "alice": []}
    async with aioabort.App(url) as app:

        @app.task(name="export")
        async def export() -> None: ...

        async def one(i: int) -> None:
            task_id, user = long_id(i), "alice" if i % 2 else "bob"
            if i % 3 == 0:
                await export.apply(task_id=task_id, labels={"user": user})
                made["queued"].append(task_id)
                if user == "alice":
                    made["alice"].append(task_id)
            elif i % 3 == 1:
                async with aioabort.abortable(
                    task_id, app=app, name="report", labels={"user": user}
                ):
                    pass
                made["finished"].append(task_id)
            else:
                await app.create(task_id, name="import")
                await app.handle(task_id).abort(LONG_REASON, by="operator")
                made["aborted"].append(task_id)

        for start in range(0, n, 250):  # concurrent writes share commits
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 250))))
        made["newest"] = [r.id for r in await app.tasks(limit=100)]  # the first two pages
        alice = await app.tasks(labels={"user": "alice"}, states=["PENDING"], limit=10)
        made["newest_alice"] = [r.id for r in alice]
    return made


async def layout_holds(page: Any) -> None:
    """Nothing is wider than the window, and every Abort button is inside it."""
    box = await page.evaluate(
        """() => ({
            width: innerWidth,
            scroll: document.documentElement.scrollWidth,
            buttons: [...document.querySelectorAll('button[data-action="abort"]')]
                .map((b) => b.getBoundingClientRect())
                .map((r) => ({left: r.left, right: r.right, width: r.width})),
        })"""
    )
    assert box["scroll"] <= box["width"], box["scroll"]
    for button in box["buttons"]:
        assert 0 <= button["left"] and button["right"] <= box["width"] and button["width"] > 20


@pytest.mark.parametrize("n", [0, 5, 500, pytest.param(10_000, marks=pytest.mark.slow)])
async def test_the_layout_holds_with_any_number_of_tasks(
    chromium: str, sqlite_url: str, n: int
) -> None:
    from playwright.async_api import async_playwright

    made = await populate(sqlite_url, n)
    async with fastapi_example(sqlite_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            for viewport in (WIDE, PHONE):
                page = await browser.new_page(viewport=viewport)
                await page.goto(f"{base}/aioabort/")
                if n == 0:
                    await page.locator("td.empty", has_text="No tasks yet.").wait_for()
                else:
                    newest = made["newest"][0]
                    await page.locator(f'tr[data-task-id="{newest}"]').wait_for()
                    assert await page.locator("tr.task").count() == min(n, 50)
                    counts = page.locator('#counts button[data-state="PENDING"] b')
                    assert await counts.inner_text() == str(len(made["queued"]))
                await layout_holds(page)
                older = page.locator("#older")
                assert await older.is_enabled() is (n > 50)
                if SCREENSHOTS and n == 500:
                    name = f"dashboard-{viewport['width']}.png"
                    await page.screenshot(path=str(Path(SCREENSHOTS) / name))
                await page.close()
        finally:
            await browser.close()


@pytest.mark.slow
async def test_paging_search_details_and_live_updates_at_10000(
    chromium: str, sqlite_url: str
) -> None:
    """The server pages and searches 10,000 tasks; a whole id is shown and copied; a text
    selection survives the live updates that change other rows; on a phone too."""
    from playwright.async_api import async_playwright

    n = 10_000
    made = await populate(sqlite_url, n)
    async with fastapi_example(sqlite_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            context = await browser.new_context(viewport=PHONE)
            await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
            page = await context.new_page()
            listed: list[str] = []
            page.on(
                "response",
                lambda r: listed.append(r.url) if "/aioabort/tasks?" in r.url else None,
            )
            await page.goto(f"{base}/aioabort/")
            first, second = made["newest"][0], made["newest"][50]
            await page.locator(f'tr[data-task-id="{first}"]').wait_for()

            # Paging: the second page is the next 50, newest first.
            await page.locator("#older").click()
            await page.locator(f'tr[data-task-id="{second}"]').wait_for()
            assert await page.locator("#range").inner_text() == "51\N{EN DASH}100"
            await page.locator("#newer").click()
            await page.locator(f'tr[data-task-id="{first}"]').wait_for()

            # Search by the start of an id: one 200-character id among 10,000.
            wanted = long_id(7 * 700)
            await page.locator("#q").fill(wanted[:-1])
            await page.locator(f'tr[data-task-id="{wanted}"]').wait_for()
            await wait_for_rows(page, lambda count: count <= 10)
            assert "q=" in page.url  # the filter is kept in the URL

            # The whole id, on demand, and copied.
            row = page.locator(f'tr[data-task-id="{wanted}"]')
            await row.locator('button[data-action="details"]').click()
            detail = page.locator(f'tr[data-detail-of="{wanted}"]')
            assert await detail.locator(".whole-id").inner_text() == wanted
            # Its timeline, read from the task route when the details open.
            await detail.locator("ol.timeline li").first.wait_for()
            first_event = await detail.locator("ol.timeline li").first.inner_text()
            assert " · queued" in first_event or " · started" in first_event, first_event
            await layout_holds(page)
            await detail.locator('button[data-action="copy"]').click()
            await detail.locator('button[data-action="copy"]', has_text="Copied").wait_for()
            assert await page.evaluate("navigator.clipboard.readText()") == wanted

            # By label and state, then a selection kept through live updates of other rows.
            await page.locator("#q").fill("")
            await page.locator("#labels").fill("user=alice")
            await page.locator("#state").select_option("PENDING")
            newest_alice = made["newest_alice"][0]
            await page.locator(f'tr[data-task-id="{newest_alice}"]').wait_for()
            await wait_for_rows(page, lambda count: count == 50)
            assert (
                await page.locator("tr.task td.state-cell:not([data-state=PENDING])").count() == 0
            )
            keep = made["newest_alice"][2]
            await page.locator(f'tr[data-task-id="{keep}"] button[data-action="details"]').click()
            await page.evaluate(
                """(id) => {
                    const node = document.querySelector(`tr[data-detail-of="${id}"] .whole-id`);
                    const range = document.createRange(); range.selectNodeContents(node);
                    getSelection().removeAllRanges(); getSelection().addRange(range);
                }""",
                keep,
            )
            async with aioabort.App(sqlite_url) as app:
                await app.handle(newest_alice).abort("changed under the reader")
            before = len(listed)
            await page.locator(f'tr[data-task-id="{newest_alice}"]').wait_for(state="detached")
            await wait_until(lambda: len(listed) >= before + 2, timeout=30)  # two more reads
            assert await page.evaluate("getSelection().toString()") == keep
        finally:
            await browser.close()


async def wait_for_rows(page: Any, fits: Any) -> None:
    async def check() -> bool:
        return bool(fits(await page.locator("tr.task").count()))

    await wait_until(check, timeout=15)


async def test_bulk_abort_of_the_filter_after_a_preview(chromium: str, sqlite_url: str) -> None:
    from playwright.async_api import async_playwright

    made = await populate(sqlite_url, 500)
    async with fastapi_example(sqlite_url) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page(viewport=WIDE)
            await page.goto(f"{base}/aioabort/")
            bulk = page.locator("#bulk")
            await page.locator("tr.task").first.wait_for()
            assert await bulk.is_disabled()  # no filter: nothing to abort by
            await page.locator("#labels").fill("user=alice")
            await page.locator(f'tr[data-task-id="{made["newest_alice"][0]}"]').wait_for()
            await wait_until(bulk.is_enabled, timeout=15)
            await bulk.click()
            confirm = page.locator("#confirm.open")
            await confirm.wait_for()
            count = len(made["alice"])
            assert f"Abort {count} tasks matching this filter?" in await confirm.inner_text()
            async with aioabort.App(sqlite_url) as app:  # the preview changed nothing
                assert await app.handle(made["alice"][0]).state() is TaskState.PENDING
            await page.locator("#confirm-no").click()
            await confirm.wait_for(state="hidden")
            await bulk.click()
            await page.locator("#confirm-yes").click()
            await page.locator("#notice", has_text=f"Aborted {count} tasks.").wait_for()
            await layout_holds(page)
        finally:
            await browser.close()
    async with aioabort.App(sqlite_url) as app:
        alice = await app.tasks(labels={"user": "alice"}, states=["PENDING"])
        bob = await app.tasks(labels={"user": "bob"}, states=["PENDING"], limit=1000)
        stopped = await app.handle(made["alice"][0]).record()
    assert alice == [] and len(bob) == len(made["queued"]) - count
    assert stopped.state is TaskState.ABORTED and stopped.reason is not None
    assert stopped.reason.message == "aborted from the dashboard"
