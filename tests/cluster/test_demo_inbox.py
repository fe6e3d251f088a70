"""`/demo/inbox` in a real headless browser (Debian's chromium, driven by Selenium through
the system chromedriver — nothing is downloaded): an order update posted through the API
appears on the page within a second and the bell's unread count goes up; marking it read
on one page updates a second open page (another browser, so another session).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.user_tokens import user_token

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromedriver (.ci/run installs them)",
)


@pytest.fixture
def browser() -> Iterator[Callable[[], object]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def new():
        options = Options()
        options.binary_location = str(CHROMIUM)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        drivers.append(driver)
        return driver

    yield new
    for driver in drivers:
        driver.quit()


def until(predicate, timeout_s: float, what: str, every_s: float = 0.02) -> float:
    """Seconds until `predicate()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, what
        time.sleep(every_s)
    return time.monotonic() - started


def open_inbox(driver, stack, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.api_url}/demo/inbox")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#connect button[type=submit]").click()
    try:
        until(
            lambda: driver.find_element(By.ID, "status").text.startswith("live as"),
            15,
            "the page never went live",
        )
    except AssertionError:
        # What the page says (connecting…, disconnected (code), or signed out with a
        # reason in the token field) and what its console logged: why it never went live.
        status = driver.find_element(By.ID, "status").text
        reason = driver.find_element(By.ID, "token").get_attribute("placeholder")
        console = [entry["message"] for entry in driver.get_log("browser")][-10:]
        raise AssertionError(
            f"the page never went live: status {status!r}, sign-out reason {reason!r}, "
            f"console {console}"
        ) from None


def unread(driver) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, "unread").text)


def item(driver, notification_id: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'#items li[data-id="{notification_id}"]')
    return found[0] if found else None


def test_the_page_shows_live_arrivals_and_read_state_across_pages(stack, api, browser, uid):
    from selenium.webdriver.common.by import By

    user = f"u-demo-{uid}"
    token = user_token(stack, user)
    first, second = browser(), browser()
    open_inbox(first, stack, token)
    open_inbox(second, stack, token)
    assert unread(first) == unread(second) == 0

    def post(notification_id: str) -> None:
        event = {
            "event_id": notification_id,
            "type": "order.updated",
            "user_id": user,
            "order_id": f"D-{notification_id}",
            "status": "shipped",
        }
        assert api.post("/v1/events", json={"events": [event]}).status_code == 202

    # A first update warms the path (the router's and sender's first batch for this user's
    # shard); the one measured is the second.
    post(f"warm-{uid}")
    until(lambda: item(first, f"warm-{uid}") is not None, 20, "the first update never came")
    item(first, f"warm-{uid}").find_element(By.CSS_SELECTOR, ".mark-read").click()
    until(lambda: unread(first) == unread(second) == 0, 5, "the warm-up stayed unread")

    notification_id = f"demo-{uid}"
    post(notification_id)
    took = until(lambda: item(first, notification_id) is not None, 1.0, "not on the page in 1 s")
    until(lambda: unread(first) == 1, 1.0, "the bell did not count it")
    until(lambda: item(second, notification_id) is not None, 1.0, "not on the second page")
    assert unread(second) == 1
    assert "on its way" in item(first, notification_id).text

    item(first, notification_id).find_element(By.CSS_SELECTOR, ".mark-read").click()
    until(lambda: unread(first) == 0, 2, "marking read did not lower the count")
    until(
        lambda: "read" in item(second, notification_id).get_attribute("class").split(),
        2,
        "the second page never saw the read",
    )
    assert unread(second) == 0
    print(f"order update on the page {took:.3f} s after the API accepted it")


def test_the_page_is_served_with_a_strict_policy(stack):
    answer = httpx.get(f"{stack.api_url}/demo/inbox")
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert httpx.get(f"{stack.api_url}/demo/inbox.js").status_code == 200
    assert "/demo/inbox" not in httpx.get(f"{stack.api_url}/openapi.json").json()["paths"]
