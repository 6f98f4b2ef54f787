"""The explorer in headless Chromium (Debian's chromium package, driven by Playwright through
``executable_path``): load the page, enter a prompt, click a token and a feature, see the head
split / DFA and the feature's dashboard, open it in the Features tab, open the circuit view and
the linear view. Screenshots are saved to ``test-artifacts/explorer/`` at the repository root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mechscope.explorer import DashboardConfig, ExplorerConfig
from mechscope.explorer.app import create_app, start_server
from mechscope.explorer.sample import build_sample

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "explorer"
PROMPT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download is not reachable offline)."""
    for candidate in (os.environ.get("MECHSCOPE_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Chromium is not installed: the explorer's browser test needs it. Install it with "
                "`apt-get install -y chromium` (as root; `make test` does this), or point MECHSCOPE_CHROMIUM at a Chromium binary.")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    sample = build_sample(tmp_path_factory.mktemp("explorer-sample"), tokenizer=tokenizer)
    config = ExplorerConfig(model=str(sample["model"]), dictionaries=[str(p) for p in sample["dictionaries"]],
                            circuits=[str(sample["circuit"])], ground_truths=[str(sample["ground_truth"])],
                            linear=str(sample["linear_map"]), cache_dir=tmp_path_factory.mktemp("explorer-cache"),
                            dashboards=DashboardConfig(n_contexts=48, context_len=32, top_k=8))
    with start_server(create_app(config)) as handle:
        yield handle


def test_explorer_in_headless_chromium(server, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (the test extra; no browser download is needed, "
                    "the test drives Debian's chromium)")
    executable = chromium_path()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)

            # load the page
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            assert "explorer-sample-2l" in page.text_content("#model-name")

            # enter a prompt: tokens appear, each with its top prediction
            page.fill("#prompt-input", PROMPT)
            page.click("#analyze")
            page.wait_for_selector(".tok")
            tokens = page.locator(".tok")
            assert tokens.count() == len(server.server.config.app.state.workspace.model.to_tokens(PROMPT)[0])
            assert page.locator(".tok .tok-pred").count() == tokens.count()

            # click a token: its predictions and the top features of both dictionaries
            tokens.nth(7).click()
            page.wait_for_selector("#token-panel h2")
            assert "#7" in page.text_content("#token-panel h2")
            assert page.locator("#token-panel table.preds tr").count() == 6  # header + top 5
            assert page.locator(".feature-chip[data-dictionary='0']").count() > 0

            # click an attention-output feature: highlighted across the prompt, head split, DFA, dashboard
            chip = page.locator(".feature-chip[data-dictionary='1']").first
            feature = chip.get_attribute("data-feature")
            chip.click()
            page.wait_for_selector("#dashboard .dash-title")
            assert f"Feature #{feature}" in page.text_content("#feature-summary h2")
            assert page.locator("#attention tr.head-row").count() == 4
            assert page.locator("#attention table.dfa tr").count() == 4 + 2  # header, 4 heads, total
            highlighted = page.eval_on_selector_all(".tok", "els => els.filter(e => e.style.backgroundColor && !e.style.backgroundColor.endsWith(', 0)')).length")
            assert highlighted >= 1
            assert page.locator("#dashboard .dash-context").count() >= 1
            assert page.locator("#dashboard .dash-context .ctx-tok.current").count() == page.locator("#dashboard .dash-context").count()
            assert page.locator("#dashboard svg.hist rect.hist-bar").count() == 32
            assert page.locator("#dashboard table.logits tr").count() == 20
            assert "%" in page.text_content("#dashboard .density")
            page.screenshot(path=str(shots / "prompt.png"), full_page=True)

            # the same dashboard in the Features tab (a direct link)
            page.click("#feature-summary a")
            page.wait_for_selector("#dashboard-standalone .dash-title")
            assert f"feature #{feature}" in page.text_content("#dashboard-standalone .dash-title")
            page.screenshot(path=str(shots / "feature.png"), full_page=True)

            # open the circuit: a layered graph with its score against the ground truth
            page.click("nav a[data-view='circuits']")
            page.click(".circuit-link")
            page.wait_for_selector(".circuit-svg g.node")
            assert page.locator(".circuit-svg g.node").count() == 12
            assert page.locator(".circuit-svg g.node.truth").count() == 3
            assert page.locator(".circuit-svg path.edge").count() == 110
            assert page.text_content(".score-table td.auc") == "1.00"
            page.screenshot(path=str(shots / "circuit.png"), full_page=True)

            # open the linear view: columns, rows and singular vectors as images; click a pixel for its column
            page.click("nav a[data-view='linear']")
            page.wait_for_selector(".linear-svd img")
            assert page.locator(".linear-columns img").count() == 9 and page.locator(".linear-rows img").count() == 9
            assert page.locator(".linear-svd img").count() == 12
            assert page.eval_on_selector_all("#linear img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
            page.locator("#linear img.clickable").first.click(position={"x": 30, "y": 40})
            page.wait_for_selector("#linear-pick img")
            assert "column (y=" in page.text_content("#linear-pick figcaption")
            page.screenshot(path=str(shots / "linear.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for png in shots.glob("*.png"):
        assert png.stat().st_size > 10_000, f"{png.name} looks empty"
        shutil.copy2(png, ARTIFACTS / png.name)
