"""`mlops-nb export edge`: a registered version as a self-contained folder for devices and browsers: the model as ONNX
and ORT files, labels, model card, a runner needing only onnxruntime and numpy, and a static page that runs it with
onnxruntime-web (fetched from the npm registry once, cached)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from string import Template

from mlops_nb.contracts import ModelCard
from mlops_nb.products import file_sha256, write_json
from mlops_nb.registry import fetch_version
from mlops_nb.settings import Settings

__all__ = ["EdgeError", "ORT_WEB_VERSION", "WEB_FILES", "MANIFEST", "export_edge", "input_kind", "ort_web_files",
           "listing"]

ORT_WEB_VERSION = "1.30.0"
# the WebAssembly-only build of onnxruntime-web and the module and binary it loads (not the WebGPU/WebGL builds)
WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MANIFEST = "edge.json"  # what the bundle holds (and what marks a folder as an edge bundle)
TEMPLATES = Path(__file__).resolve().parent / "templates" / "edge"
PIXEL = re.compile(r"(pixel|pix|px)[ _-]?\d+([ _x-]\d+)?|\d+x\d+", re.IGNORECASE)  # pixel_3_4, pixel12, 1x1


class EdgeError(RuntimeError):
    """The bundle cannot be written: npm missing or its fetch failed, or an output folder that is not ours."""


def input_kind(features: list[str]) -> dict:
    """How a person gives the page a row: a drawing pad when the features are a square grid of pixels (a square
    count of at least 16, every name pixel-like), else a form of the named features."""
    side = math.isqrt(len(features))
    if side >= 4 and side * side == len(features) and all(PIXEL.fullmatch(name) for name in features):
        return {"kind": "pixels", "side": side}
    return {"kind": "form"}


def _cache() -> Path:
    """Where the onnxruntime-web files are kept between exports."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlops-nb" / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def ort_web_files(cache: Path | None = None) -> Path:
    """The folder holding WEB_FILES of onnxruntime-web ORT_WEB_VERSION: the cache, filled by `npm pack` from the npm
    registry the first time (npm checks the package's integrity)."""
    cache = cache or _cache()
    if all((cache / name).is_file() for name in WEB_FILES):
        return cache
    npm = shutil.which("npm")
    if npm is None:
        raise EdgeError(f"npm is not installed: the page needs onnxruntime-web {ORT_WEB_VERSION} from the npm "
                        "registry (install Node.js, which brings npm, then export again)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        try:
            fetched = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--loglevel=error"],
                                     cwd=tmp, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"npm pack onnxruntime-web@{ORT_WEB_VERSION} took over 10 minutes: check the network "
                            "or npm's registry setting") from None
        if fetched.returncode != 0:
            reason = [line.removeprefix("npm error ").strip() for line in fetched.stderr.splitlines()
                      if line.strip() and not line.strip().startswith("npm error     at ")][:4]
            raise EdgeError(f"npm could not fetch onnxruntime-web@{ORT_WEB_VERSION} from its registry (exit status "
                            f"{fetched.returncode}): {'; '.join(reason)}")
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            for name in WEB_FILES:
                tar.extract(f"package/dist/{name}", tmp, filter="data")
        shutil.rmtree(cache, ignore_errors=True)  # a partial folder from an older, interrupted export
        (Path(tmp) / "package/dist").rename(cache)
    return cache


def _check_outdir(outdir: Path) -> None:
    """Refuse an output folder that holds anything but an earlier edge bundle: the export replaces it whole."""
    if not outdir.exists():
        return
    if not outdir.is_dir():
        raise EdgeError(f"{outdir} is a file: name a new or empty folder for the bundle")
    present = {p.relative_to(outdir).as_posix() for p in outdir.rglob("*") if p.is_symlink() or not p.is_dir()}
    try:
        listed = set(json.loads((outdir / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    if present - listed:
        raise EdgeError(f"{outdir} holds files that are not an edge bundle's (e.g. {sorted(present - listed)[0]}): "
                        "name a new or empty folder, or an earlier bundle to replace")


def _to_ort(onnx_path: Path) -> None:
    """The ORT format file beside `onnx_path`, by ONNX Runtime's own converter: optimizations applied once, none
    specific to this machine's processor."""
    with tempfile.TemporaryDirectory(dir=onnx_path.parent) as out:
        converted = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                                    "--optimization_style", "Fixed", "--output_dir", out, onnx_path],
                                   capture_output=True, text=True)
        if converted.returncode != 0:
            raise EdgeError(f"ONNX Runtime could not convert {onnx_path.name} to the ORT format: "
                            f"{converted.stderr.strip()[-2000:]}")
        (Path(out) / f"{onnx_path.stem}.ort").rename(onnx_path.with_suffix(".ort"))


def _write_bundle(dest: Path, onnx_path: Path, card: ModelCard, web: Path) -> None:
    """Fill the new folder `dest`: model files, labels, card, runner, page, onnxruntime-web, README, manifest."""
    (dest / "ort").mkdir(parents=True)
    shutil.copy2(onnx_path, dest / "model.onnx")
    _to_ort(dest / "model.onnx")
    write_json(dest / "labels.json", card.classes)
    write_json(dest / "model_card.json", card.model_dump(mode="json"))
    for name in ("index.html", "app.js"):
        shutil.copy2(TEMPLATES / name, dest / name)
    shutil.copy2(TEMPLATES / "predict.py.tmpl", dest / "predict.py")  # not a .py in the package: nbdev would list it
    for name in WEB_FILES:
        shutil.copy2(web / name, dest / "ort" / name)
    readme = Template((TEMPLATES / "README.txt").read_text())
    (dest / "README.txt").write_text(readme.substitute(model=card.model_name, version=card.model_version,
                                                       ort_web=ORT_WEB_VERSION))
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    write_json(dest / MANIFEST, {"model_name": card.model_name, "model_version": card.model_version,
                                 "model": "model.ort", "input": input_kind(card.features),
                                 "onnxruntime_web": ORT_WEB_VERSION,
                                 "files": {f: file_sha256(dest / f) for f in files}})


def export_edge(settings: Settings, outdir: Path | str, version: str) -> list[Path]:
    """Write the edge bundle of registered `version` (a number, or champion) to `outdir`, atomically: built beside
    it, then renamed into place (an earlier bundle there is replaced). Returns the bundle's files."""
    outdir = Path(outdir).absolute()
    _check_outdir(outdir)
    stem = f".{outdir.name}.{uuid.uuid4().hex}"
    tmp, old = outdir.with_name(f"{stem}.tmp"), outdir.with_name(f"{stem}.old")
    try:
        with tempfile.TemporaryDirectory() as download:
            folder, card = fetch_version(settings.registry.model_name, version, Path(download) / "model", settings)
            _write_bundle(tmp, folder / "model.onnx", card, ort_web_files())
        if outdir.exists():
            outdir.rename(old)
        tmp.rename(outdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return sorted(p for p in outdir.rglob("*") if p.is_file())


def listing(files: list[Path]) -> str:
    """The bundle's files with their sizes, and the total."""
    sizes = [f.stat().st_size for f in files]
    lines = [f"{size / 1e6:9.3f} MB  {f}" for f, size in zip(files, sizes)]
    return "\n".join([*lines, f"{sum(sizes) / 1e6:9.3f} MB  in {len(files)} files"])
