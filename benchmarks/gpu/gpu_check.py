"""GPU check of the mlops-nb bento: in-process CUDA vs CPU scoring, `bentoml serve` of the GPU bento (CUDA) and of
the same bento on CPU, parity against the CPU answers made where the bento was built, and a short load test.

python3 benchmarks/gpu/gpu_check.py --bento .gpu/run/bento.bento --parity .gpu/run/parity.npz --out $OUT [--gpu-device cuda] [--seconds 5]
Writes OUT/gpu_check.json and OUT/serve_{cuda,cpu}.log; prints the figures as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np

T0 = time.monotonic()
RESULT: dict = {"errors": []}


def say(*parts) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *parts, flush=True)


def note_error(where: str, exc: BaseException) -> None:
    say(f"ERROR in {where}: {exc!r}")
    traceback.print_exc()
    RESULT["errors"].append({"where": where, "error": repr(exc)[:2000]})


def sh(command: list[str], timeout: float = 60) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {exc!r}"


# ---------------------------------------------------------------------------------------------------------- setup
def environment() -> dict:
    import importlib.metadata as md

    import onnxruntime as ort

    info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "onnxruntime_file": ort.__file__, "onnxruntime_version": ort.__version__,
            "available_providers": ort.get_available_providers(),
            "nvidia_smi": sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
                              "--format=csv,noheader"])}
    try:
        info["onnxruntime_build"] = ort.get_build_info()
    except Exception:  # noqa: BLE001
        pass
    versions = {}
    for name in ("onnxruntime-gpu", "onnxruntime", "bentoml", "numpy", "pydantic", "starlette", "uvicorn",
                 "uvloop", "httptools", "orjson", "prometheus-client", "anyio", "click", "attrs", "nvidia-ml-py",
                 "nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime", "torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info["versions"] = versions
    return info


def import_bento(bento: Path, env: dict) -> tuple[str, Path, Path]:
    """`bentoml import` into BENTOML_HOME; return the tag, the bento's src folder and its model folder."""
    out = subprocess.run([sys.executable, "-m", "bentoml", "import", str(bento.resolve())], env=env, capture_output=True,
                         text=True, timeout=120)
    say("bentoml import:", (out.stdout + out.stderr).strip().replace("\n", " ")[-300:])
    if out.returncode:
        raise RuntimeError(f"bentoml import failed ({out.returncode}): {out.stderr[-2000:]}")
    home = Path(env["BENTOML_HOME"])
    bento_dir = max((p for p in (home / "bentos").glob("*/*") if (p / "bento.yaml").is_file()),
                    key=lambda p: p.stat().st_mtime)
    tag = f"{bento_dir.parent.name}:{bento_dir.name}"
    model_dir = next(p.parent for p in (home / "models").glob("*/*/model.onnx"))
    return tag, bento_dir / "src", model_dir


# ------------------------------------------------------------------------------------------------ in-process part
def timed(score, features: np.ndarray, *, warmup: int, reps: int, budget_s: float) -> dict:
    for _ in range(warmup):
        score(features)
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < reps and (len(times) < 5 or time.perf_counter() < deadline):
        t = time.perf_counter()
        score(features)
        times.append(time.perf_counter() - t)
    times = np.asarray(times) * 1e3
    return {"n": int(times.size), "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "min_ms": float(times.min()), "rows_per_s_at_median": float(features.shape[0] / np.median(times) * 1e3)}


def in_process(src: Path, model_dir: Path, parity: dict, batch_sizes: list[int], budget_s: float) -> dict:
    sys.path.insert(0, str(src))
    from mlops_nb.contracts import ModelCard
    from mlops_nb.serving.scoring import ScoringCore

    card = ModelCard.model_validate_json((model_dir / "model_card.json").read_text())
    X, ref = parity["X"], parity["probs"]
    report: dict = {"model_dir": str(model_dir), "model_version": card.model_version}
    cores = {}
    for device in ("cpu", "cuda"):
        started = time.perf_counter()
        try:
            cores[device] = ScoringCore(model_dir, card, device=device, max_rows=1 << 20)
            report[f"{device}_provider"] = cores[device].provider
            report[f"{device}_session_s"] = time.perf_counter() - started
            report[f"{device}_providers"] = cores[device].session.get_providers()
        except Exception as exc:  # noqa: BLE001
            note_error(f"in-process ScoringCore(device={device})", exc)
    say("in-process providers:", {d: c.provider for d, c in cores.items()})
    answers = {}
    for device, core in cores.items():
        validated = core.validate(X.tolist(), numbers_only=True)
        first = time.perf_counter()
        answers[device] = core.score(validated)
        report[f"{device}_first_call_ms"] = (time.perf_counter() - first) * 1e3
        labels = core.classes[answers[device].argmax(axis=1)]
        report[f"{device}_vs_built_cpu"] = {
            "max_abs_diff": float(np.abs(answers[device].astype(np.float64) - ref).max()),
            "label_agreement": float((labels == parity["labels"]).mean()),
            "accuracy_vs_target": float((labels == parity["target"]).mean())}
    if "cuda" in answers and "cpu" in answers:
        a, b = answers["cuda"].astype(np.float64), answers["cpu"].astype(np.float64)
        report["cuda_vs_cpu"] = {"rows": int(X.shape[0]), "max_abs_diff": float(np.abs(a - b).max()),
                                 "label_agreement": float((a.argmax(1) == b.argmax(1)).mean())}
        say("in-process CUDA vs CPU:", report["cuda_vs_cpu"])
    latency = {}
    for bs in batch_sizes:
        features = np.ascontiguousarray(np.resize(X, (bs, X.shape[1])), dtype=np.float32)
        for device, core in cores.items():
            reps = {1: 3000, 64: 2000, 1024: 500}.get(bs, 100)
            try:
                latency[f"{device}_bs{bs}"] = timed(core.score, features, warmup=10 if bs > 1024 else 50,
                                                    reps=reps, budget_s=budget_s)
            except Exception as exc:  # noqa: BLE001
                note_error(f"in-process latency {device} bs={bs}", exc)
                continue
            say(f"in-process {device:4s} bs={bs:6d}: median {latency[f'{device}_bs{bs}']['median_ms']:.4f} ms "
                f"(p90 {latency[f'{device}_bs{bs}']['p90_ms']:.4f}, n={latency[f'{device}_bs{bs}']['n']})")
        if f"cuda_bs{bs}" in latency and f"cpu_bs{bs}" in latency:
            latency[f"speedup_bs{bs}_cpu_over_cuda"] = latency[f"cpu_bs{bs}"]["median_ms"] / \
                latency[f"cuda_bs{bs}"]["median_ms"]
    report["latency"] = latency
    # big-batch parity too (the kernels can differ from the 1000-row call)
    if "cuda" in cores and "cpu" in cores:
        big = np.ascontiguousarray(np.resize(X, (max(batch_sizes), X.shape[1])), dtype=np.float32)
        a, b = cores["cuda"].score(big).astype(np.float64), cores["cpu"].score(big).astype(np.float64)
        report["cuda_vs_cpu_big_batch"] = {"rows": int(big.shape[0]), "max_abs_diff": float(np.abs(a - b).max()),
                                           "label_agreement": float((a.argmax(1) == b.argmax(1)).mean())}
    cores.clear()
    gc.collect()
    return report


# ----------------------------------------------------------------------------------------------------- HTTP client
def http(method: str, url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _request_bytes(port: int, body: bytes) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip().lower()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get(b"connection") == b"close"


async def _connection(port: int, requests: list[bytes], offset: int, start: float, end: float, lats: list,
                      counts: dict) -> None:
    reader = writer = None
    i = offset
    while time.time() < end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = requests[i % len(requests)]
            i += 1
            t = time.perf_counter()
            writer.write(payload)
            status, close = await asyncio.wait_for(_read_response(reader), timeout=30)
            now = time.time()
            if now >= start:  # requests answered during the warm-up are not counted
                lats.append(time.perf_counter() - t)
                counts[str(status)] = counts.get(str(status), 0) + 1
            if close:
                writer.close()
                writer = None
        except Exception as exc:  # noqa: BLE001
            if time.time() >= start:
                counts[f"error:{type(exc).__name__}"] = counts.get(f"error:{type(exc).__name__}", 0) + 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _client_process(args) -> dict:
    port, requests, connections, offset, start, end, cpus = args
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    lats: list = []
    counts: dict = {}

    async def main():
        await asyncio.gather(*(_connection(port, requests, offset + k * 7, start, end, lats, counts)
                               for k in range(connections)))

    asyncio.run(main())
    return {"lats": lats, "counts": counts}


def load_level(port: int, bodies: list[bytes], rows: int, concurrency: int, seconds: float, warmup: float,
               client_cpus: list[int]) -> dict:
    requests = [_request_bytes(port, b) for b in bodies]
    processes = max(1, min(concurrency, len(client_cpus) or 1, 8))
    per = [concurrency // processes + (1 if k < concurrency % processes else 0) for k in range(processes)]
    start = time.time() + 0.5 + warmup
    end = start + seconds
    cpu_sets = [[client_cpus[k % len(client_cpus)]] if client_cpus else None for k in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_client_process, [(port, requests, per[k], k * 1000, start, end, cpu_sets[k])
                                           for k in range(processes)])
    lats = np.asarray([x for p in parts for x in p["lats"]]) * 1e3
    counts: dict = {}
    for p in parts:
        for k, v in p["counts"].items():
            counts[k] = counts.get(k, 0) + v
    ok = sum(v for k, v in counts.items() if k.startswith("2"))
    out = {"rows_per_request": rows, "concurrency": concurrency, "seconds": seconds, "client_processes": processes,
           "responses_by_status": counts, "ok": ok, "non_2xx": sum(counts.values()) - ok,
           "req_per_s": ok / seconds, "rows_per_s": ok * rows / seconds}
    if lats.size:
        out.update({f"p{q}_ms": float(np.percentile(lats, q)) for q in (50, 90, 99)})
        out["max_ms"] = float(lats.max())
    return out


# ----------------------------------------------------------------------------------------------------- serving
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_memory_by_pid() -> str:
    return sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"], timeout=20)


def serve_and_measure(label: str, tag: str, env: dict, out_dir: Path, parity: dict, seconds: float,
                      server_cpus: list[int], client_cpus: list[int], levels: list[tuple[int, int]]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = out_dir / f"serve_{label}.log"
    report: dict = {"label": label, "env_device": env.get("MLOPS_NB_SERVING_DEVICE", "(bento default)"),
                    "log": log_path.name}
    command = [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)]

    def pin():
        if server_cpus:
            try:
                os.sched_setaffinity(0, server_cpus)
            except OSError:
                pass

    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=pin)
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"bentoml serve ({label}) exited with {process.returncode}; see {log_path}")
                try:
                    if http("GET", f"{url}/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() - started > 120:
                    raise TimeoutError(f"bentoml serve ({label}) not ready after 120 s")
                time.sleep(0.2)
            report["ready_after_s"] = time.monotonic() - started
            say(f"serve {label}: ready after {report['ready_after_s']:.1f} s on port {port}")
            report["healthz"] = http("GET", f"{url}/healthz")[0]
            report["readyz"] = http("GET", f"{url}/readyz")[0]
            status, body = http("GET", f"{url}/model/metadata")
            report["metadata_status"] = status
            try:
                meta = json.loads(body)
                report["provider"] = meta.get("provider")
                report["metadata"] = {k: meta.get(k) for k in ("provider", "batching", "model_name", "model_version")
                                      if k in meta}
            except ValueError:
                report["metadata_body"] = body[:500].decode(errors="replace")
            say(f"serve {label}: /healthz {report['healthz']}, /model/metadata {status}, provider "
                f"{report.get('provider')}")
            # parity: one 1000-row request, then 100 single-row requests
            X = parity["X"]
            status, body = http("POST", f"{url}/predict", json.dumps({"instances": X.tolist()}).encode())
            report["predict_1000_status"] = status
            if status == 200:
                answer = json.loads(body)
                probs = np.asarray([p["probabilities"] for p in answer["predictions"]], dtype=np.float64)
                labels = np.asarray([p["label"] for p in answer["predictions"]])
                report["served_probs"] = probs
                report["parity_vs_built_cpu"] = {
                    "rows": int(X.shape[0]), "max_abs_diff": float(np.abs(probs - parity["probs"]).max()),
                    "label_agreement": float((labels == parity["labels"]).mean()),
                    "within_1e-4": bool(np.abs(probs - parity["probs"]).max() <= 1e-4),
                    "model_version": answer.get("model_version")}
            else:
                report["predict_1000_body"] = body[:1000].decode(errors="replace")
            single_status, worst = {}, 0.0
            for i in range(100):
                status, body = http("POST", f"{url}/predict", json.dumps({"instances": [X[i].tolist()]}).encode())
                single_status[str(status)] = single_status.get(str(status), 0) + 1
                if status == 200:
                    p = np.asarray(json.loads(body)["predictions"][0]["probabilities"], dtype=np.float64)
                    worst = max(worst, float(np.abs(p - parity["probs"][i]).max()))
            report["single_row_parity"] = {"by_status": single_status, "max_abs_diff": worst}
            say(f"serve {label}: 1000-row /predict {report['predict_1000_status']}, "
                f"{report.get('parity_vs_built_cpu')}; 100 single rows {single_status}, max diff {worst:.2e}")
            # load test
            rng = np.random.default_rng(0)
            bodies = {1: [json.dumps({"instances": [X[i].tolist()]}).encode() for i in range(256)],
                      64: [json.dumps({"instances": X[rng.choice(len(X), 64, replace=False)].tolist()}).encode()
                           for _ in range(32)]}
            load_level(port, bodies[1], 1, 8, 1.0, 0.0, client_cpus)  # warm-up
            report["load"] = []
            for rows, concurrency in levels:
                level = load_level(port, bodies[rows], rows, concurrency, seconds, 0.5, client_cpus)
                report["load"].append(level)
                say(f"serve {label}: rows={rows:3d} c={concurrency:3d}: {level['req_per_s']:9.1f} req/s "
                    f"{level['rows_per_s']:10.1f} rows/s p50 {level.get('p50_ms', float('nan')):.3f} ms "
                    f"p99 {level.get('p99_ms', float('nan')):.3f} ms statuses {level['responses_by_status']}")
            report["gpu_memory_by_pid"] = gpu_memory_by_pid()
            report["server_pid"] = process.pid
            status, body = http("GET", f"{url}/metrics")
            report["metrics_status"] = status
            text = body.decode(errors="replace")
            report["mlops_nb_model_info"] = [l for l in text.splitlines() if l.startswith("mlops_nb_model_info")]
            report["mlops_nb_requests_total"] = [l for l in text.splitlines()
                                                 if l.startswith("mlops_nb_requests_total")]
            report["mlops_nb_dropped_or_rejected"] = [
                l for l in text.splitlines()
                if l.startswith(("mlops_nb_prediction_log_dropped_total", "mlops_nb_overload_rejected_total"))]
            say(f"serve {label}: /metrics {status}: {report['mlops_nb_model_info']}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
            report["exit_code"] = process.returncode
    return report


# --------------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bento", type=Path, required=True)
    parser.add_argument("--parity", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--home", type=Path, default=Path("/tmp/gpucheck-bentoml"))
    parser.add_argument("--gpu-device", default="", help="MLOPS_NB_SERVING_DEVICE for the GPU serve ('' = the "
                                                         "bento's own, cuda); 'auto' or 'cpu' to test without a GPU")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per in-process latency measurement")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: inproc,cuda,cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    parity = dict(np.load(args.parity))
    parity["probs"] = parity["probs"].astype(np.float64)

    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    server_cpus, client_cpus = cpus[:half], cpus[half:] or cpus
    RESULT["cpus"] = {"server": server_cpus, "clients": client_cpus}
    levels = [(1, 1), (1, 32), (64, 1), (64, 32)]

    try:
        RESULT["environment"] = environment()
        say("environment:", json.dumps(RESULT["environment"]))
    except Exception as exc:  # noqa: BLE001
        note_error("environment", exc)

    shutil.rmtree(args.home, ignore_errors=True)
    env = {**os.environ, "BENTOML_HOME": str(args.home), "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1",
           "PYTHONUNBUFFERED": "1"}
    try:
        tag, src, model_dir = import_bento(args.bento, env)
    except Exception as exc:  # noqa: BLE001
        note_error("bentoml import", exc)
        write(args.out)
        return 2
    RESULT["bento"] = {"tag": tag, "src": str(src), "model_dir": str(model_dir)}

    if "inproc" not in skip:
        try:
            RESULT["in_process"] = in_process(src, model_dir, parity, [1, 64, 1024, 16384], args.budget)
        except Exception as exc:  # noqa: BLE001
            note_error("in-process", exc)
        write(args.out)

    served = {}
    for label, device, extra in (("cuda", args.gpu_device, {}),
                                 ("cuda-batched", args.gpu_device, {"MLOPS_NB_SERVING_BATCHING": "adaptive"}),
                                 ("cpu", "cpu", {})):
        if label in skip:
            continue
        serve_env = {**env, "MLOPS_NB_MONITORING_PREDICTION_LOG": f"/tmp/gpucheck-predictions-{label}.jsonl", **extra}
        if device:
            serve_env["MLOPS_NB_SERVING_DEVICE"] = device
        try:
            served[label] = serve_and_measure(label, tag, serve_env, args.out, parity, args.seconds, server_cpus,
                                              client_cpus, levels)
        except Exception as exc:  # noqa: BLE001
            note_error(f"serve {label}", exc)
        RESULT["served"] = {k: {kk: vv for kk, vv in v.items() if kk != "served_probs"} for k, v in served.items()}
        write(args.out)
        log = args.out / f"serve_{label}.log"
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            say(f"serve {label} log tail:\n    " + "\n    ".join(tail))
    if "cuda" in served and "cpu" in served:
        a, b = served["cuda"].get("served_probs"), served["cpu"].get("served_probs")
        if a is not None and b is not None:
            RESULT["served_cuda_vs_served_cpu"] = {"max_abs_diff": float(np.abs(a - b).max()),
                                                   "label_agreement": float((a.argmax(1) == b.argmax(1)).mean())}
        ratios = []
        for g, c in zip(served["cuda"].get("load", []), served["cpu"].get("load", [])):
            ratios.append({"rows_per_request": g["rows_per_request"], "concurrency": g["concurrency"],
                           "req_per_s_cuda_over_cpu": g["req_per_s"] / c["req_per_s"] if c["req_per_s"] else None,
                           "p50_cuda_over_cpu": (g.get("p50_ms") or 0) / c["p50_ms"] if c.get("p50_ms") else None})
        RESULT["serve_ratios"] = ratios
        for r in ratios:
            say("ratio cuda/cpu:", r)
    for report in served.values():
        report.pop("served_probs", None)
    RESULT["served"] = served
    RESULT["total_s"] = time.monotonic() - T0
    write(args.out)
    say("summary:", json.dumps(summary(), indent=1))
    return 0 if not RESULT["errors"] else 1


def summary() -> dict:
    s = {"errors": RESULT["errors"]}
    ip = RESULT.get("in_process", {})
    s["in_process"] = {k: ip.get(k) for k in ("cpu_provider", "cuda_provider", "cuda_vs_cpu", "cuda_vs_cpu_big_batch")}
    s["in_process_median_ms"] = {k: round(v["median_ms"], 4) for k, v in ip.get("latency", {}).items()
                                 if isinstance(v, dict)}
    for label, r in RESULT.get("served", {}).items():
        s[f"served_{label}"] = {"provider": r.get("provider"), "healthz": r.get("healthz"),
                                "predict_1000": r.get("predict_1000_status"), "parity": r.get("parity_vs_built_cpu"),
                                "model_info": r.get("mlops_nb_model_info"),
                                "load": [f"rows={l['rows_per_request']} c={l['concurrency']}: {l['req_per_s']:.0f} req/s "
                                         f"{l['rows_per_s']:.0f} rows/s p50 {l.get('p50_ms', 0):.3f} ms p99 "
                                         f"{l.get('p99_ms', 0):.3f} ms {l['responses_by_status']}"
                                         for l in r.get("load", [])]}
    s["served_cuda_vs_served_cpu"] = RESULT.get("served_cuda_vs_served_cpu")
    s["serve_ratios"] = RESULT.get("serve_ratios")
    s["total_s"] = RESULT.get("total_s")
    return s


def write(out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(RESULT, indent=1, default=lambda o: o.tolist()
                                                   if isinstance(o, np.ndarray) else str(o)))


if __name__ == "__main__":
    sys.exit(main())
