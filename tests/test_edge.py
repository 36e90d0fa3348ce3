"""`mlops-nb export edge`: the bundle runs without the project and answers as the served API does: its runner in a
virtual environment holding only onnxruntime and numpy, its page in headless Chromium (onnxruntime-web from the
bundle, nothing fetched elsewhere). Screenshots go to $TEST_ARTIFACTS/edge (default: test-artifacts/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import BIN, CHROMIUM_ARGS, REPO, chromium, engine_python, project_env, running

from mlops_nb.edge import MANIFEST, EdgeError, input_kind, ort_web_files
from mlops_nb.products import file_sha256
from mlops_nb.serving.bento import free_port
from mlops_nb.settings import load_settings
from mlops_nb.traffic import held_out_split

pytestmark = pytest.mark.engines

MAX_ROWS = 1024  # rows per /predict request
PAGE_ROWS = 100  # test rows scored by the page through predictRows
# one-row calls of the runner's own functions, timed in its virtual environment: milliseconds per call
LATENCY = """import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import predict
session, features, labels = predict.load()
rows = predict.read_rows(sys.argv[2], features)
predict.predict(session, rows[:1])  # the first call sets up the session's buffers
times = []
for row in rows:
    start = time.perf_counter()
    predict.predict(session, [row])
    times.append(1e3 * (time.perf_counter() - start))
times.sort()
print(json.dumps({"rows": len(times), "median_ms": statistics.median(times), "p99_ms": times[int(0.99 * len(times))]}))
"""


def export_edge(root: Path, outdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`mlops-nb export edge OUTDIR ARGS` in the project copy at `root`."""
    return subprocess.run([str(BIN / "mlops-nb"), "export", "edge", str(outdir), *args], cwd=root,
                          env=project_env(root, **env), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def served(server, built_project):
    """The test split and the served API's answers on it: (rows, labels, probabilities, model version)."""
    url, _, _ = server
    rows = held_out_split(load_settings(built_project, environ={}))[0]
    answers = []
    for start in range(0, len(rows), MAX_ROWS):
        response = httpx.post(f"{url}/predict", json={"instances": rows[start:start + MAX_ROWS].tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    predictions = [p for answer in answers for p in answer["predictions"]]
    return (rows, [p["label"] for p in predictions], np.array([p["probabilities"] for p in predictions]),
            answers[0]["model_version"])


@pytest.fixture(scope="module")
def bundle(built_project, served, tmp_path_factory) -> Path:
    """The champion's edge bundle, exported once the session's server runs (so the two are the same version)."""
    outdir = tmp_path_factory.mktemp("edge") / "bundle"
    result = export_edge(built_project, outdir)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    return outdir


@pytest.fixture(scope="module")
def rows_csv(served, bundle) -> Path:
    """The test split as a CSV file with a header: an id column the runner ignores, then the features."""
    features = json.loads((bundle / "model_card.json").read_text())["features"]
    path = bundle.parent / "rows.csv"
    rows = served[0].tolist()
    lines = [",".join(["id", *features])] + [",".join([f"r{i}", *map(str, row)]) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def shots() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts")) / "edge"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_pixel_features_get_a_drawing_pad_and_other_features_a_form():
    assert input_kind([f"pixel_{r}_{c}" for r in range(8) for c in range(8)]) == {"kind": "pixels", "side": 8}
    assert input_kind([f"pixel{i}" for i in range(784)]) == {"kind": "pixels", "side": 28}
    assert input_kind([f"{r}x{c}" for r in range(1, 5) for c in range(1, 5)]) == {"kind": "pixels", "side": 4}
    assert input_kind([f"pixel{i}" for i in range(63)]) == {"kind": "form"}  # not a square
    assert input_kind([f"f{i}" for i in range(64)]) == {"kind": "form"}  # square, but not pixels
    assert input_kind(["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]) == {
        "kind": "form"}


def test_a_missing_npm_or_a_failed_fetch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgeError, match="npm is not installed"):
        ort_web_files(tmp_path / "cache")
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found - GET x' >&2\nexit 1\n")
    npm.chmod(0o755)
    with pytest.raises(EdgeError, match="could not fetch onnxruntime-web@1.30.0 .*: code E404; 404 Not Found"):
        ort_web_files(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_bundle_holds_what_its_manifest_lists_and_the_ort_file_answers_as_the_onnx_file(bundle, served):
    manifest = json.loads((bundle / MANIFEST).read_text())
    card = json.loads((bundle / "model_card.json").read_text())
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {MANIFEST}
    assert files == set(manifest["files"]) == {
        "model.onnx", "model.ort", "labels.json", "model_card.json", "predict.py", "README.txt", "index.html",
        "app.js", "ort/ort.wasm.min.js", "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm"}
    assert all(file_sha256(bundle / name) == digest for name, digest in manifest["files"].items())
    assert manifest["model_version"] == card["model_version"] == served[3]
    assert manifest["input"] == {"kind": "pixels", "side": 8} and manifest["onnxruntime_web"] == "1.30.0"
    assert file_sha256(bundle / "model.onnx") == card["onnx_sha256"]
    assert json.loads((bundle / "labels.json").read_text()) == card["classes"]
    rows = served[0].astype(np.float32)
    rows[::7, 3] = np.nan  # missing values are filled inside the graph
    onnx, ort_format = (ort.InferenceSession(str(bundle / name)) for name in ("model.onnx", "model.ort"))
    expected = onnx.run(None, {"features": rows})[0]
    assert np.abs(ort_format.run(None, {"features": rows})[0] - expected).max() < 1e-5
    assert np.abs(expected[1::7] - served[2][1::7]).max() < 1e-5  # rows left whole: as served


def test_export_edge_replaces_an_earlier_bundle_and_refuses_any_other_folder(built_project, bundle, tmp_path):
    again = export_edge(built_project, bundle)
    assert again.returncode == 0, again.stderr
    assert str(bundle / "model.ort") in again.stdout and "MB  in 12 files" in again.stdout
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle.")]  # no temporary folder left
    (tmp_path / "notes.txt").write_text("mine")
    refused = export_edge(built_project, tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds files that are not an edge bundle's (e.g. notes.txt)" in refused.stderr
    (bundle / "extra.txt").write_text("added by hand")
    assert export_edge(built_project, bundle).returncode == 2 and (bundle / "extra.txt").exists()
    (bundle / "extra.txt").unlink()
    no_npm = export_edge(built_project, tmp_path / "new", PATH=str(BIN), XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert no_npm.returncode == 2 and "npm is not installed" in no_npm.stderr and not (tmp_path / "new").exists()


def test_the_runner_needs_only_onnxruntime_and_numpy_and_answers_as_the_served_api(bundle, served, rows_csv,
                                                                                   tmp_path):
    python = engine_python("edge-runner")
    installed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                                          text=True, check=True).stdout)
    names = {package["name"].lower().replace("_", "-") for package in installed}
    assert {"onnxruntime", "numpy"} <= names and not names & {"mlops-nb", "torch", "pandas", "scikit-learn"}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # nothing of the project's: no PYTHONPATH, own cwd

    def run(*args: str) -> list[str]:
        done = subprocess.run([str(python), str(bundle / "predict.py"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    labels = [str(label) for label in served[1]]
    assert run(str(rows_csv)) == labels
    assert run("--json", json.dumps(served[0][:5].tolist())) == labels[:5]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in served[0][:5].tolist()))
    assert run(str(tmp_path / "rows.jsonl")) == labels[:5]
    answers = [json.loads(line) for line in run(str(rows_csv), "--probabilities")]
    assert np.abs(np.array([a["probabilities"] for a in answers]) - served[2]).max() < 1e-5
    latency = subprocess.run([str(python), "-c", LATENCY, str(bundle), str(rows_csv)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True, timeout=300)
    print(f"runner, one row per call: {latency.stdout.strip()}")


def test_the_page_runs_the_model_in_chromium_and_answers_as_the_served_api(bundle, served, built_project,
                                                                           tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    executable, port = chromium(), free_port()
    url, requests, errors = f"http://127.0.0.1:{port}/", [], []
    rows, labels = served[0], served[1]
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]  # as README.txt says
    with running(command, cwd=bundle, env=dict(os.environ), log=tmp_path / "http.log", ready=url), \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=60_000)
        answers = page.evaluate("rows => predictRows(rows)", rows[:PAGE_ROWS].tolist())
        assert [a["label"] for a in answers] == labels[:PAGE_ROWS]
        assert np.abs(np.array([a["probabilities"] for a in answers]) - served[2][:PAGE_ROWS]).max() < 1e-5

        pad = page.locator("#pad").bounding_box()  # a person draws a 1: one stroke down the middle
        page.mouse.move(pad["x"] + pad["width"] * 0.5, pad["y"] + pad["height"] * 0.15)
        page.mouse.down()
        for step in range(1, 21):
            page.mouse.move(pad["x"] + pad["width"] * 0.5, pad["y"] + pad["height"] * (0.15 + 0.035 * step))
        page.mouse.up()
        page.wait_for_function("document.getElementById('label').textContent !== ''")
        drawn, shown = page.evaluate("window.lastInput"), page.inner_text("#label")
        page.screenshot(path=str(shots() / "pad.png"))
        session = ort.InferenceSession(str(bundle / "model.onnx"))
        expected = session.run(None, {"features": np.array([drawn], np.float32)})[0]
        assert max(drawn) > 8 and min(drawn) == 0  # ink in the middle column, none at the edges
        assert shown == str(json.loads((bundle / "labels.json").read_text())[int(expected.argmax())])
        assert page.locator("#probabilities .bar").count() == expected.shape[1]

        row = 3  # the form, as a person fills it for one test row
        page.goto(f"{url}?input=form")
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=60_000)
        inputs = page.locator("#form input")
        for i, value in enumerate(rows[row]):
            inputs.nth(i).fill(f"{value:g}")
        page.click("#predict")
        page.wait_for_function("document.getElementById('label').textContent !== ''")
        assert page.inner_text("#label") == str(labels[row])
        page.screenshot(path=str(shots() / "form.png"), full_page=True)
        browser.close()
    assert errors == []
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), requests
    image = np.asarray(Image.open(shots() / "pad.png").convert("RGB"))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20, "the screenshot is blank"
    assert (image.sum(axis=2) < 100).mean() > 0.005, "no ink or answer drawn"
