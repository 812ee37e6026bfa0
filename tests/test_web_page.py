"""kvd's web page in a real headless browser (Debian's chromium driven by playwright): it loads, lists an
uploaded model with its state, device, precision and parity, classifies a digit PNG correctly, and shows the
model's last benchmark. A screenshot is kept in test-artifacts/web-page.png.

`make test` installs chromium where missing (`make browser`); the test skips, saying why, only if it cannot be.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.skip("chromium is not installed and `make browser` could not install it (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="module")
def web_model(served_digits, digits, tmp_path_factory):
    """The digits model with the page's needs: unit preprocessing (PNGs are 0-255), labels, one benchmark run."""
    if not hasattr(served_digits, "http_url"):
        pytest.skip("this kvd has no HTTP port yet (the front-doors branch adds --http-address)")
    from digits import LABELS, write_pngs

    out = tmp_path_factory.mktemp("web")
    labels = out / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    right = np.flatnonzero(digits.keras_probs.argmax(1) == digits.y_test)[:1]  # a digit Keras itself gets right
    png, label = write_pngs(digits.x_test[right], digits.y_test[right], out / "pngs", count=1)[0]
    with served_digits.client(timeout=300) as client:
        client.upload(digits.paths["keras"], name="web-digits", preprocess="unit", labels=labels)
        client.benchmark("web-digits", iterations=3, warmup=1, backends=["keras", "CPU"], precisions=["fp16"])
    return png, LABELS[label]


def test_web_page_lists_models_and_classifies_a_digit(served_digits, web_model):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (pip install -e '.[dev]')")
    executable = _chromium()
    png, truth = web_model
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(served_digits.http_url + "/")
            row = page.locator('#models tr[data-model="web-digits"]')
            row.wait_for(timeout=30_000)
            cells = row.locator("td").all_inner_texts()
            assert cells[0] == "web-digits" and cells[2] == "READY" and cells[3] == "CPU" and cells[4] in ("fp16", "fp32"), cells
            assert cells[5].startswith("passed") and cells[6] == "10", cells
            page.locator("#devices tbody tr").first.wait_for()
            assert "CPU" in page.locator("#devices").inner_text() and "built-in" in page.locator("#plugins").inner_text()

            page.select_option("#try-model", "web-digits")
            page.locator("#benchmark .bench").wait_for(timeout=30_000)
            chart = page.locator("#benchmark").inner_text()
            assert "Keras predict()" in chart and "OpenVINO CPU fp16" in chart and "measured in-process on the server" in chart
            page.set_input_files("#try-file", str(png))
            page.click("#try-run")
            best = page.locator("#try-result .top .label.first")
            best.wait_for(timeout=60_000)
            assert best.inner_text() == truth
            page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

            page.set_input_files("#try-file", str(Path(__file__)))  # not an image: one clear line, no crash
            page.click("#try-run")
            page.locator("#try-result .error").wait_for(timeout=30_000)
            assert "not a readable image" in page.locator("#try-result .error").inner_text()
            assert errors == []
        finally:
            browser.close()


def test_web_page_asks_for_a_token_when_kvd_requires_one(kvd_factory, digits_repo, tokens):
    """With --auth-token-file a plain browser gets the page (its shell is public, no data), is asked for a token,
    and with a read token lists the models; a wrong token is asked for again with kvd's reason."""
    import requests

    from opsutil import READ_TOKEN

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (pip install -e '.[dev]')")
    executable = _chromium()
    kvd = kvd_factory(digits_repo, "--auth-token-file", str(tokens), client_options={"token": READ_TOKEN})
    assert requests.get(kvd.http_url + "/ui/api/models", timeout=30).status_code == 401  # the data is not public
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(kvd.http_url + "/")
            page.locator("#token-form").wait_for(state="visible", timeout=30_000)
            assert "requires a token" in page.locator("#models").inner_text()
            page.fill("#token", "x" * 40)
            page.click("#token-form button")
            page.locator("#token-form").wait_for(state="visible", timeout=30_000)
            page.wait_for_function("document.querySelector('#token-message').textContent.includes('not valid')", timeout=30_000)
            page.fill("#token", READ_TOKEN)
            page.click("#token-form button")
            page.locator('#models tr[data-model="digits"]').wait_for(timeout=30_000)
            assert page.locator("#token-form").is_hidden()
            assert errors == []
        finally:
            browser.close()
