"""Drift you can provoke: the build's test split, resampled and optionally shifted, sent to the served API.

Generic over the project's data: features and target come from the build's snapshot, bounds from the served card."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from mlops_nb.products import read_json

__all__ = ["SHIFTS", "TrafficError", "held_out_split", "traffic", "send", "run"]

SHIFTS = ("none", "offset", "noise", "class-mix")


class TrafficError(ValueError):
    """Traffic cannot be made or sent: no build products, or a served model that does not fit them."""


def held_out_split(settings) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The build's test split: raw feature rows (float64), their target labels, the feature names."""
    from mlops_nb.research.data import read_snapshot

    products = settings.products_dir
    try:
        manifest, split = read_json(products / "snapshot/manifest.json"), read_json(products / "snapshot/split.json")
        frame = read_snapshot(manifest["path"], manifest["sha256"]).iloc[split["test"]]
    except FileNotFoundError as error:
        raise TrafficError(f"no test split under {products} ({error}): run a build first: ploomber build") from error
    return frame[manifest["features"]].to_numpy(np.float64), frame[manifest["target"]].to_numpy(), manifest["features"]


def traffic(x: np.ndarray, y: np.ndarray, *, rows: int, shift: str, size: float, seed: int, low: float,
            high: float) -> np.ndarray:
    """`rows` rows of `x` drawn with replacement (`default_rng(seed)`), shifted, then clipped to [low, high].

    `none`: as drawn (`size` unused). `offset`: every value + size * (high - low). `noise`: + Gaussian noise with
    sd size * the feature's std in `x` (constant features stay so). `class-mix`: a share `size` (0 to 1) of the
    rows, at random places, redrawn from the most common class of `y` (the smallest label on a tie) only, so that
    class's share becomes size + (1 - size) * its share in `y`.
    """
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")
    if not size >= 0 or (shift == "class-mix" and size > 1):
        raise ValueError(f"size must be >= 0{' and <= 1 for class-mix' if shift == 'class-mix' else ''}, not {size}")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, not {rows}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), rows)
    if shift == "class-mix":
        labels, counts = np.unique(y, return_counts=True)
        mixed = rng.choice(rows, round(size * rows), replace=False)
        index[mixed] = rng.choice(np.flatnonzero(y == labels[counts.argmax()]), len(mixed))
    out = np.asarray(x, dtype=np.float64)[index]
    if shift == "offset":
        out += size * (high - low)
    elif shift == "noise":
        out += rng.normal(0.0, 1.0, out.shape) * (size * np.std(x, axis=0))
    return np.clip(out, low, high)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def send(url: str, rows: np.ndarray, *, batch: int = 16, concurrency: int = 4, api_key: str | None = None,
         timeout_s: float = 30) -> Counter:
    """POST `rows` to `{url}/predict`, `batch` rows a request, `concurrency` requests at once; count the answers'
    HTTP status codes ("error" for a request that got no answer: refused connection, timeout)."""
    if batch < 1 or concurrency < 1:
        raise ValueError(f"batch and concurrency must be >= 1, not {batch} and {concurrency}")
    chunks = [rows[i:i + batch].tolist() for i in range(0, len(rows), batch)]
    with httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout_s,
                      limits=httpx.Limits(max_connections=concurrency)) as client:

        def post(chunk: list) -> int | str:
            try:
                return client.post("/predict", json={"instances": chunk}).status_code
            except httpx.HTTPError:
                return "error"

        with ThreadPoolExecutor(concurrency) as pool:
            return Counter(pool.map(post, chunks))


def _served_card(url: str, api_key: str | None = None, timeout_s: float = 30) -> dict:
    """The served model's card (`GET {url}/model/metadata`)."""
    try:
        response = httpx.get(f"{url}/model/metadata", headers=_headers(api_key), timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise TrafficError(f"cannot read the served model card from {url}/model/metadata: {error}") from error
    return response.json()


def run(settings, url: str, *, rows: int, shift: str, size: float, seed: int, batch: int = 16, concurrency: int = 4,
        api_key: str | None = None) -> dict:
    """Send `rows` rows of the build's test split, shifted by `shift`, to the served API at `url`; a summary.

    `started` (Unix time, taken just before the first request) is where a monitor window on this traffic begins."""
    x, y, features = held_out_split(settings)
    card = _served_card(url, api_key)
    if card["features"] != features:
        raise TrafficError(f"the served model ({card['model_name']} version {card['model_version']}) takes other "
                           f"features than the build's test split has: is {url} this project's service?")
    sample = traffic(x, y, rows=rows, shift=shift, size=size, seed=seed, low=card["feature_min"],
                     high=card["feature_max"])
    started = time.time()
    status = send(url, sample, batch=batch, concurrency=concurrency, api_key=api_key)
    return {"rows": len(sample), "requests": sum(status.values()), "status": dict(status), "shift": shift,
            "size": size, "seed": seed, "model_version": card["model_version"], "started": started,
            "finished": time.time()}
