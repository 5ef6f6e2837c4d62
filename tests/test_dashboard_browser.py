"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through the system
chromedriver (no browser download). `make test` installs both (the Makefile's browser-sysdeps).
docs/screenshot.py drives the same browser to make the README's picture of the details page.
"""
import csv as csvlib
import io
import os
import time

import pytest

from listseg import Client
from listseg.core.accounts import Credentials
from listseg.dashboard.server import Dashboard
from listseg.server import servicers
from test_dashboard import PROFILES, csv

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000"]

pytestmark = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                reason="needs Debian's chromium and chromium-driver (`make test` installs them)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def stack(monkeypatch, serve):
    """(client, dashboard url, engine). An upload of a named file (the dashboard's, not the test's own
    client.upload of bytes) is held 1.2 s after its spec, so that 'processing' shows."""
    held = servicers.SegmentsServicer.UploadList

    def slow_upload(self, requests, context):
        def stream():
            first = next(requests, None)
            if first is not None:
                yield first
                if first.spec.file_name:
                    time.sleep(1.2)
            yield from requests
        return held(self, stream(), context)
    monkeypatch.setattr(servicers.SegmentsServicer, "UploadList", slow_upload)
    server = serve()                    # after the patch: the server binds its servicers' methods
    dash = Dashboard(server.target, "127.0.0.1:0", upload_wait_s=0.3).start()
    with Client(server.target, timeout=10) as c:
        c.import_profiles(PROFILES)
        yield c, dash.url, server.engine
    dash.stop()


def until(driver, condition, timeout=15):
    """Wait for condition(); an element that vanished as the page changed just means not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(lambda d: condition())


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def csss(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def link(driver, text):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.PARTIAL_LINK_TEXT, text)


def state_of(driver, name):
    rows = csss(driver, f'tr[data-segment="{name}"]')
    return rows[0].get_attribute("data-state") if rows else None


def test_create_watch_ready_details_and_download(browser, stack, tmp_path):
    client, url, _ = stack
    rows = ["Type,Identity", "g,g1", "g,g2", "i,user3@x.com", "g,g4", "g,g4", "i,user4@x.com", "g,nobody",
            "x,bad", "g,g5", "i,user6@x.com"]
    listed = tmp_path / "vip.csv"
    listed.write_text("\n".join(rows) + "\n")
    expected = {"g1", "g2", "g3", "g4", "g5", "g6"}                   # the qualified users, by guid

    browser.get(url + "/")
    css(browser, "summary.button").click()                           # + Segment
    link(browser, "Custom list").click()
    css(browser, "#file").send_keys(str(listed))
    assert css(browser, "#name").get_attribute("value") == "vip"      # named after the file
    css(browser, "#save").click()
    until(browser, lambda: browser.current_url == url + "/" and state_of(browser, "vip") == "processing")
    browser.execute_script("window.notReloaded = true")
    until(browser, lambda: state_of(browser, "vip") == "ready")       # the page updated itself
    assert browser.execute_script("return window.notReloaded") is True
    row = css(browser, 'tr[data-segment="vip"]')
    assert row.find_element("css selector", ".size").text == "6"

    link(browser, "vip").click()                                      # Segment details
    assert css(browser, "#segment-size").text == "6"
    assert len(csss(browser, "svg.chart circle.dot")) == 1 and csss(browser, "svg.chart polyline.line")
    reach = {r.get_attribute("data-channel"): r.find_elements("css selector", "td")[0].text
             for r in csss(browser, "#reachability tr[data-channel]")}
    assert reach == {"email": "2", "sms": "2", "push": "2", "whatsapp": "0", "webpush": "0"}
    samples = csss(browser, "#sample-users tbody tr")
    assert len(samples) == 6
    guid = samples[0].find_element("css selector", "a").text
    samples[0].find_element("css selector", "a").click()              # open a sample user's profile
    assert guid in css(browser, "#profile").text and "Reachable on" in css(browser, "#profile").text
    browser.back()

    css(browser, "#download-users").click()                           # download all users
    target = browser.downloads / "vip-users.csv"
    until(browser, lambda: target.exists() and target.stat().st_size > 0)
    got = list(csvlib.reader(io.StringIO(target.read_text())))
    assert got[0] == ["Type", "Identity"] and {t for t, _ in got[1:]} == {"g"}
    assert sorted(g for _, g in got[1:]) == sorted(expected)

    client.upload(csv("g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9"), replace="vip")   # more history
    client.upload(csv("g1", "g2", "g3", "g7", "g8", "g9", "g10", "g11"), replace="vip")
    client.attach("vip", "campaign", "spring-sale", "Spring sale")
    client.attach("vip", "journey", "welcome-series", "Welcome series")
    browser.refresh()
    assert len(csss(browser, "svg.chart circle.dot")) == 3
    assert css(browser, "#campaign-count").text == "1" and css(browser, "#journey-count").text == "1"
    assert "spring-sale" in css(browser, "#consumers").text and "welcome-series" in css(browser, "#consumers").text
    assert css(browser, "#segment-size").text == "8"


def test_replace_refused_while_in_use(browser, stack, tmp_path):
    client, url, _ = stack
    client.upload(csv("g1", "g2"), name="vip")
    client.attach("vip", "campaign", "spring-sale", "Spring sale")
    browser.get(url + "/")
    css(browser, 'summary[aria-label="Actions for vip"]').click()     # the row's action menu
    link(browser, "Replace").click()
    assert "spring-sale" in css(browser, "#in-use").text
    new = tmp_path / "new.csv"
    new.write_bytes(csv("g3"))
    css(browser, "#file").send_keys(str(new))
    css(browser, "#save").click()
    until(browser, lambda: "Not replaced" in css(browser, "#in-use").text)
    assert "spring-sale" in css(browser, "#in-use").text and "nothing was changed" in css(browser, "#in-use").text
    assert client.export("vip") == csv("g1", "g2")


def test_failed_reupload_shows_troubleshoot_and_the_old_size(browser, stack, tmp_path):
    client, url, _ = stack
    client.upload(csv("g1", "g2", "g3"), name="vip")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv("nobody", "ghost", extra=b"q,zz\n"))
    browser.get(url + "/")
    css(browser, 'summary[aria-label="Actions for vip"]').click()
    link(browser, "Replace").click()
    css(browser, "#file").send_keys(str(bad))
    css(browser, "#save").click()
    until(browser, lambda: browser.current_url == url + "/" and csss(browser, 'tr[data-segment="vip"] a.problem'))
    row = css(browser, 'tr[data-segment="vip"]')
    assert row.get_attribute("data-state") == "ready" and row.find_element("css selector", ".size").text == "3"
    row.find_element("css selector", "a.problem").click()             # "File re-upload failed"
    assert css(browser, "#troubleshoot-title").text == "File re-upload failed"
    assert css(browser, "#live-size").text == "3"
    assert "no row names a known profile" in browser.page_source
    counts = {c.get_attribute("data-count"): c.text for c in csss(browser, "#report-counts td")}
    assert counts == {"rows": "3", "qualified": "0", "unknown": "2", "invalid": "1", "duplicates": "0"}
    assert [r.text for r in csss(browser, "#rejected-rows tbody tr")] == ["4 bad type"]
    css(browser, "#download-rejected").click()
    target = browser.downloads / "upload-2-rejected-rows.csv"
    until(browser, lambda: target.exists() and target.stat().st_size > 0)
    assert target.read_text() == "line,reason\n4,bad type\n"


def test_a_file_over_50_mb_is_refused_before_sending(browser, stack, tmp_path):
    _, url, _ = stack
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate((50 << 20) + 1)                                    # sparse: no real 50 MB written
    browser.get(url + "/segments/new")
    css(browser, "#file").send_keys(str(big))
    until(browser, lambda: css(browser, "#file-error").is_displayed())
    assert "up to 50 MB" in css(browser, "#file-error").text
    css(browser, "#save").click()
    assert browser.current_url == url + "/segments/new"                # nothing was sent


def test_sign_in_in_the_browser(browser, stack):
    client, url, engine = stack
    account, passcode = Credentials(engine).create("Shop")
    with Client(client.target, account, passcode) as mine:
        mine.import_profiles(PROFILES)
        mine.upload(csv("g1"), name="shop-list")
    browser.delete_all_cookies()
    browser.get(url + "/")
    assert "/signin" in browser.current_url
    css(browser, "#account").send_keys(account)
    css(browser, "#passcode").send_keys(passcode)
    css(browser, "button[type=submit].primary").click()
    until(browser, lambda: csss(browser, 'tr[data-segment="shop-list"]'))
    assert account in css(browser, "header").text
    css(browser, "header button.link").click()                        # sign out
    until(browser, lambda: "/signin" in browser.current_url)
