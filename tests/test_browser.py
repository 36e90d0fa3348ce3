"""JupyterLab in a real browser (Debian's Chromium driven by Playwright), started as README says: every notebook
opens unmodified, runs top to bottom with no error output, and closing it leaves git, the build's products and
the registry as they were. Screenshots go to $TEST_ARTIFACTS/jupyterlab (default: test-artifacts/)."""

import os
import re
import time
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS, REPO, chromium, git_status, jupyter_lab, server_errors, tree_digest

pytestmark = pytest.mark.engines

NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
RUN_TIMEOUT_S = 600
# the test's own JupyterLab user settings: every cell drawn (JupyterLab 4 draws only the cells in view, so
# prompts and outputs off screen could not be checked), and no fetch of Jupyter's news from the internet
USER_SETTINGS = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
                 "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
KERNEL_IDLE = ".jp-StatusBar-TextItem:text-is('Python 3 (ipykernel) | Idle')"  # connected, not just drawn


def wait_until_run(page, timeout_s: float = RUN_TIMEOUT_S) -> list[str]:
    """Wait until every code cell has run (numbered prompt), or one failed, and the kernel is idle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        idle = page.locator(KERNEL_IDLE).count() == 1
        done = prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts)
        if idle and (done or page.locator(STDERR).count()):
            return prompts
        time.sleep(0.5)
    raise AssertionError(f"cells still running after {timeout_s}s: {prompts}")


def close_and_shut_down(page, screenshot: Path) -> None:
    """File > Close and Shut Down Notebook, confirmed: the kernel stops and the run is not saved."""
    page.click(".lm-MenuBar-itemLabel:text-is('File')")
    page.click(".lm-Menu-itemLabel:has-text('Close and Shut Down Notebook')")
    try:
        page.click(".jp-Dialog .jp-mod-accept", timeout=30_000)
        page.wait_for_selector(".jp-Notebook", state="detached", timeout=30_000)
    except Exception:
        page.screenshot(path=str(screenshot))
        raise


def test_every_notebook_opens_clean_and_runs_all_cells_in_jupyterlab(built_project, tmp_path):
    from playwright.sync_api import sync_playwright

    root = built_project
    build = [root / "products", root / "mlruns.db", root / "mlartifacts", root / ".bentoml"]
    before = tree_digest(*build)
    shots = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts")) / "jupyterlab"
    shots.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "jupyter.log"
    console_errors, report = [], []
    with jupyter_lab(root, log, user_settings=USER_SETTINGS) as (url, token), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        for name in NOTEBOOKS:
            page.goto(f"{url}/lab/tree/notebooks/{name}?reset&token={token}")
            page.wait_for_selector(KERNEL_IDLE, timeout=120_000)
            time.sleep(1)  # kernel info arrives: a metadata mismatch would mark the notebook modified now
            assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, f"{name} is modified on opening"
            page.screenshot(path=str(shots / f"{name[:2]}-opened.png"))
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            time.sleep(1)
            prompts = wait_until_run(page)
            page.screenshot(path=str(shots / f"{name[:2]}-ran.png"), full_page=True)
            errors = page.locator(STDERR).all_inner_texts()
            assert not errors, f"{name}: error output: {errors}"
            report.append(f"{name}: {len(prompts)} code cells ran, no error output")
            close_and_shut_down(page, shots / f"{name[:2]}-closing.png")
        browser.close()
    print("\n".join(report))
    assert server_errors(log) == []
    assert console_errors == []
    assert git_status(root) == ""
    assert tree_digest(*build) == before
