"""The admin page in a real headless Chromium, against a live receiver and a real worker."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from tests.support import FORM, SERVE, broker, runtime_from_env, signed_ipn
from webhooks.app import create_app
from workers.billing.catalog import default_path
from workers.ops import samples

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser

TOKEN = "browser-admin-token"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")  # Debian's package
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = "AWDOC-BUSINESS-M"


def _catalog_without(code: str) -> str:
    """The shipped catalog less one product."""
    head, *blocks = default_path().read_text(encoding="utf-8").split("[[product]]")
    kept = [block for block in blocks if f'code = "{code}"' not in block]
    assert len(kept) == len(blocks) - 1
    return head + "".join("[[product]]" + block for block in kept)


@pytest.fixture
def catalog(tmp_path, monkeypatch) -> Iterator[Path]:
    """A catalog file the worker and the app read, lacking one product until the test adds it."""
    path = tmp_path / "catalog.toml"
    path.write_text(_catalog_without(MISSING), encoding="utf-8")
    monkeypatch.setenv("CATALOG", str(path))
    monkeypatch.setenv("MAIL_DIR", str(tmp_path / "mail"))
    runtime_from_env()
    yield path


@pytest.fixture
def admin_url(conn, catalog) -> Iterator[str]:
    """The app with the admin page on, served over HTTP, with a real Dramatiq worker behind it."""
    app = create_app({"ADMIN_TOKEN": TOKEN})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs=SERVE, daemon=True)
    thread.start()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    yield f"http://127.0.0.1:{server.server_port}"
    worker.stop()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def page(admin_url) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _order(url: str, code: str, pid: str, license_code: str) -> None:
    item = samples.SampleItem(
        code=code, pid=pid, name=code, license_ref=license_code, price="60.00"
    )
    response = requests.post(f"{url}/ipn", data=signed_ipn(items=(item,)), headers=FORM, timeout=10)
    assert response.status_code == 200, response.text


def _wait_for(conn, license_code: str, status: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT id, status FROM events WHERE license_codes @> ARRAY[%s]", (license_code,)
        ).fetchone()
        if row is not None and row["status"] == status:
            return int(row["id"])
        time.sleep(0.1)
    raise AssertionError(f"the event for {license_code} never became {status}")


PHONE = {"width": 390, "height": 844}


def _fits_a_phone(page: Page, name: str) -> None:
    """At 390 px the page does not scroll sideways (wide tables scroll in their own box)."""
    wide = page.viewport_size
    page.set_viewport_size(PHONE)
    try:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the {name} page is {width} px wide at phone width"
        shots = os.environ.get("ADMIN_SCREENSHOTS")  # a directory: keep them to look at
        if shots:
            page.screenshot(path=str(Path(shots) / f"{name}-390.png"))
    finally:
        if wide is not None:
            page.set_viewport_size(wide)


def test_an_operator_logs_in_filters_to_failed_replays_one_and_sees_it_processed(
    admin_url, page, conn, catalog
):
    _order(admin_url, MISSING, "43813", "LICBROWSER1")
    _order(admin_url, "AWDOC-TEAM-M", "43811", "LICBROWSER2")
    failed_id = _wait_for(conn, "LICBROWSER1", "failed")
    processed_id = _wait_for(conn, "LICBROWSER2", "processed")
    # The operator adds the product the order named (a later modification time: it is reloaded).
    catalog.write_text(default_path().read_text(encoding="utf-8"), encoding="utf-8")
    later = time.time_ns() + 2_000_000_000
    os.utime(catalog, ns=(later, later))

    page.goto(f"{admin_url}/admin/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Admin token").fill("not the token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(2)

    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"unknown product {MISSING}")
    expect(page.get_by_role("link", name=str(processed_id), exact=True)).to_have_count(0)

    page.get_by_role("link", name=str(failed_id), exact=True).click()
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#last-error")).to_contain_text("add it to the catalog, then replay")

    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_role("status")).to_have_text(f"Event {failed_id} enqueued for replay.")
    # The page refreshes itself while the event waits for a worker.
    expect(page.locator("#status")).to_have_text("processed", timeout=30_000)
    expect(page.locator("#outcome")).to_contain_text("LICBROWSER1: active until")
    expect(page.locator("#changes")).to_contain_text("created")
    expect(page.locator("#emails")).to_contain_text("order_confirmation")

    attempts = page.locator("#attempts tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("failed")
    expect(attempts.nth(0)).to_contain_text("provider delivery")
    expect(attempts.nth(1)).to_contain_text("processed")
    expect(attempts.nth(1)).to_contain_text("replay (admin page)")
    expect(page.locator("#blank-fields")).not_to_have_attribute("open", "")
    _fits_a_phone(page, "event")

    page.get_by_role("link", name="LICBROWSER1").first.click()
    expect(page.get_by_role("heading", name="Subscription LICBROWSER1")).to_be_visible()
    expect(page.locator("#status")).to_have_text("active")
    expect(page.locator("#subscription")).to_contain_text(MISSING)

    _fits_a_phone(page, "subscription")
    page.goto(f"{admin_url}/admin/")
    _fits_a_phone(page, "events")
    page.goto(f"{admin_url}/admin/no-such-page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()

    event = conn.execute("SELECT status, last_error FROM events WHERE id = %s", (failed_id,))
    assert event.fetchone() == {"status": "processed", "last_error": None}
    state = conn.execute("SELECT status FROM subscriptions WHERE license_code = 'LICBROWSER1'")
    assert state.fetchone() == {"status": "active"}

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(f"{admin_url}/admin/?status=failed")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
