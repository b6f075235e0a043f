"""`tbps serve` driven in a real browser (headless Chromium through Selenium): what the
browser test and the README's screenshot (``python -m tbps.serve.browser``) share.

Selenium comes with the test extra; the browser is Debian's ``chromium`` with its
``chromium-driver`` (`.ci/run` installs them where they are missing)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) executables, or why they cannot be used."""
    browser = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = next((p for d in DRIVERS if (p := shutil.which(d))), None)
    if browser is None or driver is None:
        return ("no Chromium and chromedriver on PATH (Debian: apt-get install chromium "
                "chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], timeout: float = 240.0) -> tuple[subprocess.Popen, str, str]:
    """Runs `tbps serve ARGS --port <free>` until it says it serves; (process, its URL, what
    it printed). The caller stops it (``stop``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tbps.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.startswith("serving "):  # said just before uvicorn binds: wait for it
            url = f"http://127.0.0.1:{port}"
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    get(url, "/api/info")
                    return proc, url, "".join(lines)
                except OSError:
                    time.sleep(0.2)
    stop(proc)
    raise RuntimeError("tbps serve did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def get(url: str, path: str, **params) -> tuple[int, dict]:
    """(HTTP status, JSON body) of ``GET url/path?params``."""
    from urllib.error import HTTPError

    try:
        with urlopen(f"{url}{path}?{urlencode(params)}", timeout=60) as r:
            return r.status, json.loads(r.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def chrome(size: tuple[int, int] = (1280, 900)):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if isinstance(found, str):
        raise RuntimeError(found)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(found[1]))


def wait(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def search_on_page(driver, query: str, k: int | None = None) -> list[str]:
    """Types ``query`` (and ``k``) into the page, submits, waits for the status line, and
    returns the names of the results in the order they are drawn."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    if k is not None:
        driver.execute_script("document.getElementById('k').value = arguments[0]", str(k))
    driver.execute_script("document.getElementById('status').textContent = ''")
    driver.find_element(By.ID, "go").click()
    # the page shows "searching…" while the request is out: wait for the answer (or an
    # error), else the list is read while it is being redrawn
    wait(driver, lambda d: d.find_element(By.ID, "status").text.strip() not in ("", "searching…")
         or d.find_element(By.ID, "error").is_displayed())
    # read in one script, so that no element can go stale between finding and reading it
    return driver.execute_script("return Array.from(document.querySelectorAll("
                                 "'#results li.result'), li => li.dataset.name)")


def explain_on_page(driver, rank: int = 1) -> list[str]:
    """Clicks the result at ``rank`` and waits for its overlays; their phrases."""
    from selenium.webdriver.common.by import By

    driver.find_elements(By.CSS_SELECTOR, "#results li.result button")[rank - 1].click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#overlays figure.overlay img")
         or d.find_element(By.ID, "error").is_displayed())
    wait(driver, lambda d: all(img.get_property("complete") and img.get_property("naturalWidth")
                               for img in d.find_elements(By.CSS_SELECTOR, "#overlays img")))
    return [f.text for f in driver.find_elements(By.CSS_SELECTOR, "#overlays figcaption")]


def screenshot(out: Path, query: str, ckpt: str | None, gallery: str | None, k: int = 12) -> Path:
    """The page with ``query``'s results and the first result explained, as a PNG."""
    args = [*(["--ckpt", ckpt] if ckpt else []), *(["--gallery", gallery] if gallery else [])]
    proc, url, _ = start_server(args)
    driver = chrome((1400, 760))
    try:
        driver.get(url)
        search_on_page(driver, query, k)
        explain_on_page(driver, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        stop(proc)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="screenshot of `tbps serve` with results, for docs/")
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--query", default="a woman with long black hair in a red coat and blue "
                   "jeans carrying a black backpack")
    p.add_argument("--ckpt", help="default: the newest synthetic run's best checkpoint")
    p.add_argument("--gallery", help="default: that run's test images")
    a = p.parse_args(argv)
    print(screenshot(Path(a.out), a.query, a.ckpt, a.gallery))


if __name__ == "__main__":
    main()
