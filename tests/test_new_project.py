"""`mlops-nb new` on data that is not digits: the new project's README commands pass as printed, it serves, and
shifted traffic to it is flagged by the monitor with its report."""

import json
import shlex
import subprocess

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import BIN, project_env
from sklearn.datasets import load_wine

from mlops_nb.products import read_json
from mlops_nb.serving.bento import served

pytestmark = pytest.mark.engines


def wine_csv(folder):
    """Wine cultivars as string labels, with a few missing feature values and two rows without a label."""
    frame = load_wine(as_frame=True).frame
    frame["cultivar"] = frame.pop("target").map(dict(enumerate(load_wine().target_names)))
    rng = np.random.default_rng(0)
    for column in ("alcohol", "magnesium", "hue"):
        frame.loc[rng.choice(len(frame), 3, replace=False), column] = np.nan
    frame.loc[[5, 77], "cultivar"] = None
    frame.to_csv(folder / "wine.csv", index=False)
    return folder / "wine.csv", "cultivar"


def no_signal_parquet(folder):
    """2000 rows, 90/10 integer labels drawn independently of eight noise features, as Parquet."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(2000, 8)), columns=[f"x{i}" for i in range(8)])
    frame["target"] = (rng.random(2000) < 0.1).astype(int)
    frame.to_parquet(folder / "no_signal.parquet", index=False)
    return folder / "no_signal.parquet", "target"


def readme_commands(root):
    """The commands in the new project's README's first code block, as printed."""
    block = (root / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def new_project_built(tmp_path, make_data):
    """`mlops-nb new` on the data, then the new README's commands as printed (both must pass)."""
    data, target = make_data(tmp_path)
    root = tmp_path / data.stem
    env = {k: v for k, v in project_env(root).items() if k != "PYTHONPATH"}
    new = subprocess.run([str(BIN / "mlops-nb"), "new", str(root), "--data", str(data), "--target", target],
                         env=env, capture_output=True, text=True, timeout=300)
    assert new.returncode == 0, new.stderr
    print(new.stdout)
    commands = readme_commands(root)
    assert [c[0].rsplit("/", 1)[-1] for c in commands] == ["ploomber", "pytest"]
    for command in commands:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    print(result.stdout[-400:])
    return data, target, root, env


def test_a_model_that_does_not_beat_its_baselines_is_registered_but_not_promoted(tmp_path):
    """On 90/10 labels without signal the majority class scores 0.90 accuracy: the model may pass nothing."""
    _, _, root, _ = new_project_built(tmp_path, no_signal_parquet)
    registration = read_json(root / "products/register/registration.json")
    print(registration["reason"])
    assert registration["promoted"] is False and registration["version"] == 1
    baselines = read_json(root / "products/evaluate/metrics.json")["baselines"]
    assert baselines["majority_class"]["accuracy"] >= 0.85
    assert "test accuracy" in registration["reason"] and "< baseline " in registration["reason"]
    assert "+ min_lift 0.005 (lift " in registration["reason"]
    assert read_json(root / "products/bento/bento.json")["bento_tag"] is None


def test_a_new_project_on_other_data_builds_tests_and_serves(tmp_path):
    data, target, root, env = new_project_built(tmp_path, wine_csv)

    frame = pd.read_csv(data) if data.suffix == ".csv" else pd.read_parquet(data)
    card = read_json(root / "products/register/registration.json")["card"]
    assert card["classes"] == sorted(frame[target].dropna().unique().tolist())
    rows = frame.dropna().drop(columns=target).head(8)
    log = tmp_path / "predictions.jsonl"
    env["MLOPS_NB_MONITORING_PREDICTION_LOG"] = str(log)
    with served("", cwd=root, env=env, log=tmp_path / "serve.log") as url:
        answer = httpx.post(f"{url}/predict", json={"instances": rows.to_numpy().tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        labels = [p["label"] for p in answer.json()["predictions"]]
        assert set(labels) <= set(card["classes"]) and answer.json()["model_name"] == card["model_name"]
        missing = httpx.post(f"{url}/predict", content=json.dumps({"instances": [[None] * len(card["features"])]}),
                             headers={"content-type": "application/json"}, timeout=30)
        assert missing.status_code == 400 and "instances[0][0]" in missing.text
        shifted = subprocess.run([str(BIN / "mlops-nb"), "traffic", "--url", url, "--rows", "400", "--shift", "offset",
                                  "--size", "0.2", "--json"], cwd=root, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert shifted.returncode == 0, shifted.stderr
    # monitored against the reference registered with the version, with its own labels (wine's are strings)
    since = str(json.loads(shifted.stdout)["started"])
    monitor = subprocess.run([str(BIN / "mlops-nb"), "monitor", "--since", since, "--json"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert monitor.returncode == 1, monitor.stdout[-2000:] + monitor.stderr[-2000:]
    verdict = json.loads(monitor.stdout)
    classes = verdict["versions"][0]["prediction"][0]
    assert verdict["status"] == "drift" and verdict["window"]["rows"] == 400 and verdict["flag"]
    assert classes["name"] == "predicted classes" and set(classes["bins"]) <= {str(c) for c in card["classes"]}
    assert "DRIFT" in (root / "products" / "monitor" / "report.html").read_text()
