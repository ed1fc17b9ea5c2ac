"""Headless Chromium for the page tests: Debian's chromium and chromium-driver, driven by Selenium.

Flags as this workplace's notes give them: no sandbox (root in a container), no GPU, and no
background networking, whose connections this closed network refuses.
"""

import contextlib
import shutil
import tempfile
import time

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_SECONDS = 90


@contextlib.contextmanager
def chromium(webdriver):
    """A headless Chromium session; skips with the reason when Chromium or its driver is missing."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(program) is None:
            pytest.skip(f"{program} not found: apt-get install chromium chromium-driver (scripts/test.sh does, as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="dit-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    browser.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(browser, found, what: str, seconds: float = WAIT_SECONDS):
    """found()'s first truthy value, polled; fails naming what never appeared."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"the page never showed {what} within {seconds} s; it says: "
                f"{browser.find_element('id', 'error').text!r}")
