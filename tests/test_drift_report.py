"""The drift report in a real browser (Debian's Chromium via Playwright): the verdict first, every figure drawn, a
non-blank screenshot. Screenshots go to $TEST_ARTIFACTS/monitor (default: test-artifacts/)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, CHROMIUM_ARGS, REPO, chromium, prediction_log, project_env, served_answers, served_session

from mlops_nb.products import read_json
from mlops_nb.settings import load_settings
from mlops_nb.traffic import held_out_split, traffic

pytestmark = pytest.mark.engines

BANNER_RED = (180, 35, 24)  # drift_report.COLOURS["drift"]


def test_drift_report_renders_in_chromium(built_project, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    executable = chromium()
    settings = load_settings(built_project, environ={})
    registration = read_json(built_project / "products" / "register" / "registration.json")
    x, y, _ = held_out_split(settings)
    card = registration["card"]
    rows = traffic(x, y, rows=800, shift="offset", size=0.1, seed=5, low=card["feature_min"],
                   high=card["feature_max"])
    log = prediction_log(tmp_path / "predictions.jsonl", rows, served_answers(served_session(built_project), rows),
                         name=registration["model_name"], version=str(registration["version"]))
    done = subprocess.run([str(BIN / "mlops-nb"), "monitor", "--log", str(log), "--json"], cwd=built_project,
                          env=project_env(built_project), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    report = Path(json.loads(done.stdout)["report"])

    shots = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts")) / "monitor"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        text = page.inner_text("body")
        page.screenshot(path=str(shots / "report-top.png"))
        page.screenshot(path=str(shots / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 3 and all(ok and w > 200 and h > 100 for ok, w, h in images), images
    assert text.lstrip().startswith("Drift report") and text.index("DRIFT") < 300 and "Drift found" in text
    top = np.asarray(Image.open(shots / "report-top.png").convert("RGB"))
    assert len(np.unique(top.reshape(-1, 3), axis=0)) > 50, "the screenshot is blank"
    assert (np.abs(top.astype(int) - BANNER_RED).sum(axis=2) < 30).sum() > 1000, "no red drift banner on screen"
    full = np.asarray(Image.open(shots / "report.png").convert("RGB"))
    assert full.shape[0] > 2000 and (full < 250).any(axis=2).mean() > 0.05, "the figures are not drawn"
