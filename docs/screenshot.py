"""Make docs/details.png, the README's picture of a segment's details page.

    .venv/bin/python docs/screenshot.py [OUT.png]

It builds a throwaway data directory with a segment that has six weeks of history and a rollback (the
engine takes a clock, so the versions get past dates), serves it, and photographs the details page in headless Chromium
(Debian's chromium and chromium-driver), exactly as the browser tests drive it.
"""
import os
import random
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from listseg.core.engine import Engine
from listseg.dashboard.server import Dashboard
from listseg.server.app import create_server

DAY = 86400
SIZES = [3120, 3385, 3290, 3712, 4046, 3981, 4415]      # one version a week
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1000"]


def build(data):
    rnd = random.Random(7)
    chans = [["email", "push"], ["email"], ["sms", "whatsapp"], ["push", "webpush"], ["email", "sms", "push"], []]
    people = [("%032x" % rnd.getrandbits(128), f"customer{k}@example.com" if k % 3 else None, rnd.choice(chans))
              for k in range(6000)]
    with Engine(data, map_size=1 << 30) as engine:
        acct = engine.account()
        acct.profiles.upsert(people)
        start = time.time() - 6 * 7 * DAY - 3600
        for week, size in enumerate(SIZES):
            guids = rnd.sample([p[0] for p in people], size)
            body = b"Type,Identity\n" + b"".join(b"g,%s\n" % g.encode() for g in guids)
            when = start + week * 7 * DAY
            up = acct.upload("create" if week == 0 else "replace", name="vip-customers" if week == 0 else None,
                             segment=None if week == 0 else "vip-customers", file_name=f"vip-week{week + 1}.csv",
                             now=lambda when=when: when)
            up.feed(body)
            up.finish()
        acct.segments.rollback("vip-customers", len(SIZES) - 1, now=time.time() - 1800)  # the last list was wrong
        acct.segments.attach("vip-customers", "campaign", "spring-sale", "Spring sale")
        acct.segments.attach("vip-customers", "journey", "welcome-series", "Welcome series")


def main(out):
    data = tempfile.mkdtemp(prefix="listseg-shot-")
    build(data)
    engine = Engine(data, map_size=1 << 30)
    server, port = create_server(engine)
    dash = Dashboard(f"127.0.0.1:{port}", "127.0.0.1:0").start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='listseg-chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(dash.url + "/segments/1")
        height, frame = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        driver.set_window_size(1280, height + frame)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(out)
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    finally:
        driver.quit()
        dash.stop()
        server.stop(0)
        engine.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "details.png"))
