"""Side-by-side serving benchmark: the project's bento against MLflow's model server and two framework floors.

    .venv/bin/python benchmarks/peers.py [--seconds 15] [--peers starlette,bentoml,mlflow,mlops-nb]
                                         [--levels 1,32,256] [--rows 1,64] [--bento TAG]

Run after a build (it needs products/ and the registry's champion); prints figures and ratios, not a test.
Each peer runs alone, pinned to CPU 0 (`taskset -c 0`), and is stopped before the next one starts; wrk drives it
from CPU 1 (`taskset -c 1 wrk -t1`) with JSON POST bodies of real test-split rows: a 3 s warm-up, then each
concurrency level. A Lua `response()` hook counts non-2xx answers by status; `done()` reports them with the
latency percentiles and wrk's socket errors as one JSON line. Results also go to
products/evidence/serving-benchmark.json.

Peers: `starlette` (a Starlette app that parses the body and answers a constant, under uvicorn), `bentoml` (a
BentoML service with one constant API), `mlflow` (`mlflow models serve` of the champion), `mlops-nb` (the
project's built bento), `mlops-nb-batched` (the same bento with `[serving] batching = adaptive`),
`mlops-nb-shadow` (the same bento scoring every request with its shadow challenger too; `--bento TAG` names a
bento that `MLOPS_NB_SERVING_SHADOW_FRACTION=1 mlops-nb deploy` built with one), `mlops-nb-explain` (the
same bento's `POST /explain`, for its latency beside `/predict`'s), `mlops-nb-invocations` and `mlops-nb-v2`
(the same bento over MLflow's scoring protocol and the Open Inference Protocol v2, each compared with its
`/predict`). Every server keeps its framework's defaults (workers, access logs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import httpx

from mlops_nb.serving.bento import free_port
from mlops_nb.pipeline import TELEMETRY_OFF
from mlops_nb.products import read_json, write_json
from mlops_nb.research.data import read_snapshot
from mlops_nb.settings import Settings, load_settings

BIN = Path(sys.executable).parent
SERVER_CPU, WRK_CPU = "0", "1"
WARMUP_S, WARMUP_CONNECTIONS = 3, 8
WRK_TIMEOUT = "10s"
READY_TIMEOUT_S = 300
MARKER = "peers-json "
V2_INPUT = "features"  # the exported ONNX graph's input name
PROTOCOLS = {"mlops-nb-invocations": "MLflow's POST /invocations", "mlops-nb-v2": "Open Inference v2 infer"}
BASELINE, SUBJECT = "mlflow", "mlops-nb"
FLOORS = ("starlette", "bentoml")

STARLETTE_APP = '''
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def predict(request):
    await request.json()
    return JSONResponse({"predictions": [0]})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
'''

BENTOML_SERVICE = '''
import bentoml


@bentoml.service
class Floor:
    @bentoml.api
    async def predict(self, instances: list[list[float]]) -> dict:
        return {"predictions": [0]}
'''

# wrk script; @BODY@ becomes the JSON body. Counts per status live in each thread's Lua state (a global, so
# that done() can read them with thread:get).
WRK_LUA = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[@BODY@]==]
statuses = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local counts, parts = {}, {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format('@MARKER@{"requests": %d, "duration_us": %d, "p50_us": %d, "p75_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "non_2xx": {%s}, "socket_errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d}, "wrk_status_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(75),
    latency:percentile(90), latency:percentile(99), table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout, e.status))
end
'''


@dataclass(frozen=True)
class Launch:
    """How to start one server: the command (before pinning), its environment and working folder."""

    command: list[str]
    env: dict[str, str]
    cwd: Path


@dataclass(frozen=True)
class Peer:
    """A server under test: where to POST (`{model}`: the registered name), which JSON key holds the rows (`v2`: an
    Open Inference Protocol tensor), and how to start it on a port."""

    name: str
    path: str
    body_key: str
    launch: Callable[[Settings, Path, int], Launch]

    def body(self, rows: list[list[float]]) -> str:
        """The JSON request body for `rows`."""
        if self.body_key == "v2":
            return json.dumps({"inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [len(rows), len(rows[0])],
                                           "data": rows}]})
        return json.dumps({self.body_key: rows})


def base_env() -> dict[str, str]:
    """This process's environment with telemetry off and the venv's bin first on PATH."""
    return {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def starlette_floor(settings: Settings, scratch: Path, port: int) -> Launch:
    """uvicorn (loop and http auto) running a Starlette app that parses the body and answers a constant."""
    (scratch / "floor_app.py").write_text(STARLETTE_APP)
    return Launch([str(BIN / "uvicorn"), "floor_app:app", "--app-dir", str(scratch), "--host", "127.0.0.1",
                   "--port", str(port)], base_env(), scratch)


def bentoml_floor(settings: Settings, scratch: Path, port: int) -> Launch:
    """`bentoml serve` of a service with one API that answers a constant, with its own BENTOML_HOME."""
    (scratch / "floor_service.py").write_text(BENTOML_SERVICE)
    env = {**base_env(), "BENTOML_HOME": str(scratch / "bentoml-home")}
    return Launch([str(BIN / "bentoml"), "serve", "floor_service:Floor", "--host", "127.0.0.1", "--port", str(port)],
                  env, scratch)


def mlflow_server(settings: Settings, scratch: Path, port: int) -> Launch:
    """`mlflow models serve` of the registry's champion (it execs `uvicorn` from PATH)."""
    model = f"models:/{settings.registry.model_name}@champion"
    env = {**base_env(), "MLFLOW_TRACKING_URI": settings.tracking_uri}
    return Launch([str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                   "--host", "127.0.0.1", "--port", str(port)], env, scratch)


def mlops_nb_bento(settings: Settings, scratch: Path, port: int, *, tag: str | None = None,
                   **overrides: str) -> Launch:
    """`bentoml serve` of the bento `tag` (default: the one the build made; settings `overrides` as environment
    variables); its prediction log goes to the scratch folder."""
    tag = tag or read_json(settings.products_dir / "bento/bento.json")["bento_tag"]
    env = {**base_env(), "MLOPS_NB_MONITORING_PREDICTION_LOG": str(scratch / "predictions.jsonl"), **overrides}
    return Launch([str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env,
                  settings.root)


PEERS = {peer.name: peer for peer in [
    Peer("starlette", "/predict", "instances", starlette_floor),
    Peer("bentoml", "/predict", "instances", bentoml_floor),
    Peer("mlflow", "/invocations", "instances", mlflow_server),
    Peer("mlops-nb", "/predict", "instances", mlops_nb_bento),
    # the same bento with in-process adaptive batching instead of inline scoring
    Peer("mlops-nb-batched", "/predict", "instances",
         partial(mlops_nb_bento, MLOPS_NB_SERVING_BATCHING="adaptive")),
    # the same bento scoring every request with its bundled shadow challenger too (`--bento` a deployed one that
    # holds a challenger: `MLOPS_NB_SERVING_SHADOW_FRACTION=1 mlops-nb deploy`)
    Peer("mlops-nb-shadow", "/predict", "instances",
         partial(mlops_nb_bento, MLOPS_NB_SERVING_SHADOW_FRACTION="1")),
    # the same bento's POST /explain: occlusion over every feature, one batched ONNX call per request
    Peer("mlops-nb-explain", "/explain", "instances", mlops_nb_bento),
    # the same bento's other protocols (PROTOCOLS), each measured against its /predict
    Peer("mlops-nb-invocations", "/invocations", "instances", mlops_nb_bento),
    Peer("mlops-nb-v2", "/v2/models/{model}/infer", "v2", mlops_nb_bento),
]}


def feature_rows(settings: Settings) -> list[list[float]]:
    """Raw feature values of the test split, one list per row."""
    products = settings.products_dir
    manifest, split = read_json(products / "snapshot/manifest.json"), read_json(products / "snapshot/split.json")
    frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    return frame[manifest["features"]].to_numpy(float).tolist()


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the server's process group is still there (the leader is reaped first)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the server's whole process group, then SIGKILL whatever is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        if not group_alive(process):
            return
        os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait_s
        while group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.2)
    if group_alive(process):
        raise RuntimeError(f"process group {process.pid} survived SIGKILL")


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(process: subprocess.Popen, url: str, body: str, log: Path) -> None:
    """Poll with the real request until it gets a 2xx; fail at once on a 4xx (wrong body) or if the server exits."""
    deadline, last = time.monotonic() + READY_TIMEOUT_S, "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")
        try:
            response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        except httpx.HTTPError as error:
            last = repr(error)
        else:
            if response.is_success:
                return
            last = f"HTTP {response.status_code}: {response.text[:500]}"
            if 400 <= response.status_code < 500:
                raise RuntimeError(f"{url} rejected the request body: {last}")
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering 2xx after {READY_TIMEOUT_S}s ({last}):\n{tail(log)}")


@contextmanager
def running(peer: Peer, settings: Settings, scratch: Path, body: str):
    """Start `peer` pinned to SERVER_CPU, wait until it answers `body` with a 2xx, yield its URL, stop it."""
    port = free_port()
    launch = peer.launch(settings, scratch, port)
    log = scratch / f"{peer.name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *launch.command], cwd=launch.cwd, env=launch.env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}{peer.path.format(model=settings.registry.model_name)}"
        wait_ready(process, url, body, log)
        yield url
    finally:
        stop(process)


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    """One wrk run pinned to WRK_CPU; the figures its done() hook printed, in ms and req/s."""
    command = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", WRK_TIMEOUT, "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, env=base_env())
    line = next((l for l in result.stdout.splitlines() if l.startswith(MARKER)), None)
    if result.returncode or line is None:
        raise RuntimeError(f"`{' '.join(command)}` exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line[len(MARKER):])
    return {"requests": raw["requests"], "duration_s": raw["duration_us"] / 1e6,
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            **{f"p{p}_ms": raw[f"p{p}_us"] / 1000 for p in (50, 75, 90, 99)},
            "non_2xx": raw["non_2xx"], "socket_errors": raw["socket_errors"],
            "wrk_status_errors": raw["wrk_status_errors"]}


def measure(peer: Peer, settings: Settings, rows: list[list[float]], *, row_counts: list[int], levels: list[int],
            seconds: int, scratch: Path) -> list[dict]:
    """Serve `peer` once per body size; warm up, then run wrk at each concurrency level."""
    records = []
    for n in row_counts:
        body = peer.body([rows[i % len(rows)] for i in range(n)])
        script = scratch / f"{peer.name}-{n}.lua"
        script.write_text(WRK_LUA.replace("@BODY@", body).replace("@MARKER@", MARKER))
        with running(peer, settings, scratch, body) as url:
            wrk(url, script, WARMUP_CONNECTIONS, WARMUP_S)
            for c in levels:
                record = {"peer": peer.name, "rows": n, "connections": c, **wrk(url, script, c, seconds)}
                record["rows_per_s"] = record["rps"] * n
                records.append(record)
                print(f"  {peer.name} rows={n} c={c}: {record['rps']:.1f} req/s, p50 {record['p50_ms']:.2f} ms, "
                      f"p99 {record['p99_ms']:.2f} ms", file=sys.stderr, flush=True)
    return records


def summed(records: list[dict], key: str) -> Counter:
    """The counts under `key` (non-2xx by status, or socket errors by kind) summed over records."""
    total = Counter()
    for r in records:
        total.update(r[key])
    return total


def by_status(records: list[dict]) -> str:
    """Non-2xx counts over records, by status code."""
    return ", ".join(f"{code}: {n}" for code, n in sorted(summed(records, "non_2xx").items())) or "none"


def socket_errors(records: list[dict]) -> str:
    """wrk's socket errors over records, by kind."""
    return ", ".join(f"{kind} {n}" for kind, n in summed(records, "socket_errors").items() if n) or "none"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def figures_table(records: list[dict], levels: list[int]) -> str:
    """One row per peer and body size: req/s, p50 and p99 per level, errors over all levels."""
    header = ["peer", "rows per request"]
    for c in levels:
        header += [f"c={c} req/s", f"c={c} p50 ms", f"c={c} p99 ms"]
    header += ["non-2xx by status (all levels)", "socket errors"]
    rows = []
    for peer, n in dict.fromkeys((r["peer"], r["rows"]) for r in records):
        group = [r for r in records if (r["peer"], r["rows"]) == (peer, n)]
        cells = [peer, str(n)]
        for r in group:
            cells += [f"{r['rps']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
        rows.append(cells + [by_status(group), socket_errors(group)])
    return markdown(header, rows)


def rows_table(records: list[dict], levels: list[int]) -> str:
    """Rows per second (req/s x rows per request) for the multi-row bodies."""
    multi = [r for r in records if r["rows"] > 1]
    keys = dict.fromkeys((r["peer"], r["rows"]) for r in multi)
    rows = [[peer, str(n), *(f"{r['rows_per_s']:.0f}" for r in multi if (r["peer"], r["rows"]) == (peer, n))]
            for peer, n in keys]
    return markdown(["peer", "rows per request", *(f"c={c} rows/s" for c in levels)], rows)


def ratio_specs(row_counts: list[int], levels: list[int]) -> list[tuple[str, int, int, str, str, float]]:
    """The compared figures: (label, rows, level, record key, better, target ratio vs mlflow)."""
    specs = [(f"1-row req/s at c={c}", 1, c, "rps", "higher", 1.0) for c in (1, 32)]
    specs += [("1-row p50 at c=1", 1, 1, "p50_ms", "lower", 1.0), ("1-row p99 at c=32", 1, 32, "p99_ms", "lower", 1.0)]
    specs += [(f"64-row rows/s at c={c}", 64, c, "rows_per_s", "higher", 3.0) for c in levels]
    return [s for s in specs if s[1] in row_counts and s[2] in levels]


def ratios(records: list[dict], row_counts: list[int], levels: list[int]) -> list[dict]:
    """mlops-nb's figures divided by mlflow's (with the target) and by each floor's."""
    index = {(r["peer"], r["rows"], r["connections"]): r for r in records}
    out = []
    for label, n, c, key, better, target in ratio_specs(row_counts, levels):
        subject = index.get((SUBJECT, n, c))
        if subject is None:
            continue
        entry = {"figure": label, "better": better, "target": target}
        for peer in (BASELINE, *FLOORS):
            other = index.get((peer, n, c))
            entry[f"vs_{peer}"] = subject[key] / other[key] if other and other[key] else None
        vs = entry[f"vs_{BASELINE}"]
        entry["holds"] = None if vs is None else vs >= target if better == "higher" else vs <= target
        out.append(entry)
    return out


def ratios_table(entries: list[dict]) -> str:
    """Ratios of mlops-nb to mlflow (with the target and whether it holds) and to the two floors."""
    def fmt(x):
        return "n/a" if x is None else f"{x:.2f}x"

    rows = [[e["figure"], fmt(e[f"vs_{BASELINE}"]), f"{'>=' if e['better'] == 'higher' else '<='} {e['target']:.1f}x",
             {True: "yes", False: "NO", None: "n/a"}[e["holds"]], *(fmt(e[f"vs_{p}"]) for p in FLOORS)]
            for e in entries]
    return markdown([f"{SUBJECT} figure", f"/ {BASELINE}", "target", "holds",
                     *(f"/ {p} floor" for p in FLOORS)], rows)


def protocols_table(records: list[dict]) -> str:
    """Each other protocol of the bento beside its /predict: req/s at each level and body size, and the ratio."""
    index = {(r["peer"], r["rows"], r["connections"]): r for r in records}
    rows = [[PROTOCOLS[peer], str(n), str(c), f"{r['rps']:.1f}", f"{base['rps']:.1f}", f"{r['rps'] / base['rps']:.2f}x"]
            for (peer, n, c), r in index.items() if peer in PROTOCOLS and (base := index.get((SUBJECT, n, c)))]
    return markdown(["protocol", "rows per request", "connections", "req/s", "/predict req/s", "/ /predict"], rows)


def int_list(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def peer_list(text: str) -> list[Peer]:
    """Parse a comma-separated list of peer names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    return [PEERS[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per concurrency level")
    parser.add_argument("--peers", type=peer_list, default=list(PEERS.values()), help=f"from {','.join(PEERS)}")
    parser.add_argument("--levels", type=int_list, default=[1, 32, 256], help="wrk connections, e.g. 1,32,256")
    parser.add_argument("--rows", type=int_list, default=[1, 64], help="rows per request body, e.g. 1,64")
    parser.add_argument("--bento", help="the bento the mlops-nb peers serve (default: the build's)")
    args = parser.parse_args()
    if args.bento:
        args.peers = [replace(p, launch=partial(p.launch, tag=args.bento)) if p.name.startswith("mlops-nb") else p
                      for p in args.peers]
    os.environ.update(TELEMETRY_OFF)
    settings = load_settings()
    rows = feature_rows(settings)
    records = []
    with tempfile.TemporaryDirectory(prefix="mlops-nb-peers-") as tmp:
        for peer in args.peers:
            print(f"== {peer.name}: POST {peer.path} {{{peer.body_key!r}: rows}}", file=sys.stderr, flush=True)
            scratch = Path(tmp) / peer.name
            scratch.mkdir()
            records += measure(peer, settings, rows, row_counts=args.rows, levels=args.levels,
                               seconds=args.seconds, scratch=scratch)
    entries = ratios(records, args.rows, args.levels)
    print(f"## Serving peers: server on CPU {SERVER_CPU}, wrk -t1 on CPU {WRK_CPU}, {args.seconds} s per level "
          f"after a {WARMUP_S} s warm-up, {os.cpu_count()} CPUs on the host\n")
    print(figures_table(records, args.levels) + "\n")
    if any(n > 1 for n in args.rows):
        print(rows_table(records, args.levels) + "\n")
    if entries:
        print(ratios_table(entries) + "\n")
    if any(p.name in PROTOCOLS for p in args.peers):
        print(protocols_table(records) + "\n")
    evidence = settings.products_dir / "evidence/serving-benchmark.json"
    write_json(evidence, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": args.seconds,
                          "warmup_s": WARMUP_S, "levels": args.levels, "rows": args.rows,
                          "cpus": {"server": SERVER_CPU, "wrk": WRK_CPU, "host": os.cpu_count()},
                          "peers": {p.name: {"path": p.path, "body_key": p.body_key} for p in args.peers},
                          "results": records, "ratios": entries})
    print(f"results: {evidence}")


if __name__ == "__main__":
    main()
