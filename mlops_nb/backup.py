"""Backup and restore: one tar.gz of a project's state with a manifest of checksums; a restore checks every member
before anything lands in its folder, and moves the registry's artifact locations along."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from contextlib import nullcontext
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath

from mlops_nb.products import atomic_path, file_sha256, read_json, write_json
from mlops_nb.settings import SETTINGS_FILE, Settings
from mlops_nb.tracking import copy_sqlite, git, relocate_artifacts

__all__ = ["BackupError", "backup", "restore", "verify", "MANIFEST", "EVIDENCE"]

MANIFEST = "MANIFEST.json"
PROJECT, BENTO = "project", "bento"  # archive folders: the project folder's files; the bento `bentoml export` wrote
EVIDENCE = "evidence/backup.json"  # in products/: the last backup, for `mlops-nb readiness`
FORMAT = 1
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # a live store's companions: the online copy holds their content


class BackupError(RuntimeError):
    """A backup cannot be made or an archive cannot be restored; the message names the setting, member or folder."""


def _inside(settings: Settings, path: Path, setting: str) -> Path:
    """`path` relative to the project root; a `BackupError` naming `setting` when it lies outside."""
    root = settings.root.resolve()
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        raise BackupError(f"{setting} = {path} lies outside the project {root}: a backup holds the project folder "
                          "only; point the setting inside it, or back that up separately") from None


def _sources(root: Path) -> list[Path]:
    """The project's own files, relative to `root`: what git tracks or would (a checkout), else settings.ini."""
    listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    names = [Path(n) for n in listed.split("\0") if n] if listed is not None else [Path(SETTINGS_FILE)]
    return [n for n in names if (root / n).is_file()]


def _stage_project(settings: Settings, staged: Path, archive: Path) -> dict:
    """Copy the project's files and state into `staged` (the sqlite store through its online backup); return where
    the state lies, relative to the project."""
    from mlops_nb.monitoring import log_files

    root = settings.root.resolve()
    db = _inside(settings, Path(settings.tracking_uri.removeprefix("sqlite:///")), "[tracking] uri")
    state = {"tracking_db": db.as_posix(),
             "artifact_root": _inside(settings, settings.path(settings.tracking.artifact_root),
                                      "[tracking] artifact_root").as_posix(),
             "products": _inside(settings, settings.products_dir, "[paths] products").as_posix()}
    if not (root / db).is_file():
        raise BackupError(f"[tracking] uri: no registry at {root / db}: run a build first (ploomber build)")
    log = settings.path(settings.monitoring.prediction_log)
    logs = [f.resolve().relative_to(root) for f in log_files(log) if f.resolve().is_relative_to(root)]
    outside = [f"the prediction log {log} ([monitoring] prediction_log): outside the project"]
    state["left_out"] = outside if log_files(log) and not logs else []
    files = {*_sources(root), *logs}
    for folder in (state["artifact_root"], state["products"]):
        files |= {f.relative_to(root) for f in (root / folder).rglob("*") if f.is_file()}
    skipped = {db, *(db.with_name(db.name + s) for s in SQLITE_SIDE_FILES)}
    for name in sorted(files - skipped):
        if (root / name).resolve() != archive:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, staged / name)
    (staged / db).parent.mkdir(parents=True, exist_ok=True)
    copy_sqlite(root / db, staged / db)
    return state


def _stage_bento(settings: Settings, staged: Path) -> dict | None:
    """Export the bento deployed last into `staged` (`bentoml export`); None when no bento was built."""
    from mlops_nb.serving.bento import last_deployed

    record = last_deployed(settings.products_dir)
    tag = read_json(record).get("bento_tag") if record else None
    if not tag:
        return None
    import bentoml

    staged.mkdir(parents=True)
    try:
        path = Path(bentoml.bentos.export_bento(tag, str(staged / f"{tag.replace(':', '-')}.bento")))
    except bentoml.exceptions.NotFound:
        raise BackupError(f"bento {tag} ({record}) is not in the BentoML store at BENTOML_HOME="
                          f"{os.environ.get('BENTOML_HOME', '~/bentoml')}: set BENTOML_HOME to the store the build "
                          "used") from None
    return {"tag": tag, "member": f"{BENTO}/{path.name}", "model_version": read_json(record).get("model_version")}


def _champion(settings: Settings) -> str | None:
    from mlops_nb.registry import champion

    found = champion(settings.registry.model_name, settings)
    return str(found.version) if found else None


def backup(settings: Settings, file: Path | str) -> dict:
    """Write the project's state to the tar.gz `file` (atomically) with MANIFEST.json first: the project's files,
    the registry (sqlite store, ledger included, and artifacts), products, prediction log and the bento deployed
    last. The archive is read back and verified; products/evidence/backup.json records it. Returns that record."""
    if settings.tracking.remote:
        raise BackupError(f"[tracking] uri = {settings.tracking.uri} is a tracking server: back up its backend store "
                          "(the database `mlflow server --backend-store-uri` names) and its artifact store "
                          "(--artifacts-destination) where the server runs; `mlops-nb backup` copies a local sqlite "
                          "store")
    file = Path(file).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        state = _stage_project(settings, staged / PROJECT, file)
        bento = _stage_bento(settings, staged / BENTO)
        members = [{"path": f.relative_to(staged).as_posix(), "size": f.stat().st_size, "sha256": file_sha256(f)}
                   for f in sorted(staged.rglob("*")) if f.is_file()]
        commit = git(settings.root, "rev-parse", "HEAD")
        manifest = {"format": FORMAT, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "mlops_nb": metadata.version("mlops-nb"), "git_commit": commit,
                    "git_dirty": bool(git(settings.root, "status", "--porcelain")) if commit else None,
                    "tracking_backend": "sqlite", "root": str(settings.root.resolve()), **state,
                    "champion": _champion(settings), "bento": bento, "members": members}
        with atomic_path(file) as out, tarfile.open(out, "w:gz") as tar:
            body = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(body), datetime.now().timestamp()
            tar.addfile(info, io.BytesIO(body))
            for member in members:
                tar.add(staged / member["path"], arcname=member["path"], recursive=False)
    verify(file)
    evidence = {"time": manifest["time"], "archive": str(file), "size": file.stat().st_size,
                "sha256": file_sha256(file), "members": len(members), "verified": True,
                "champion": manifest["champion"], "bento_tag": bento["tag"] if bento else None,
                "left_out": state["left_out"]}
    write_json(settings.products_dir / EVIDENCE, evidence)
    return evidence


def _member_path(member: tarfile.TarInfo) -> PurePosixPath:
    """A member's name, refused unless it is a plain file under project/ or bento/ (or the manifest) with a
    relative name free of `..`: no links, devices or paths that would land outside the restored folder."""
    path = PurePosixPath(member.name)
    if (not member.isfile() or path.is_absolute() or ".." in path.parts or
            not (path.as_posix() == MANIFEST or len(path.parts) > 1 and path.parts[0] in (PROJECT, BENTO))):
        raise BackupError(f"member {member.name!r}: refused (a restore takes only plain files under {PROJECT}/ and "
                          f"{BENTO}/, with relative names free of '..')")
    return path


def _copy(stream, target: Path | None) -> tuple[int, str]:
    """Read `stream` to its end, into `target` when given; its size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") if target else nullcontext() as out:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
            if out:
                out.write(block)
    return size, digest.hexdigest()


def _read(file: Path, into: Path | None) -> dict:
    """Read every member of the archive `file` (into folder `into` when given) and check it against the manifest;
    return the manifest. `BackupError` naming each bad member: corrupted, missing, extra, duplicated or refused."""
    if not file.is_file():
        raise BackupError(f"{file}: no such archive")
    manifest, seen, name = None, {}, None
    try:
        with tarfile.open(file, "r:gz") as tar:
            for member in tar:
                name = member.name
                path = _member_path(member)
                if path.as_posix() == MANIFEST:
                    manifest = json.loads(tar.extractfile(member).read())
                    continue
                if path.as_posix() in seen:
                    raise BackupError(f"member {name}: in the archive twice")
                seen[path.as_posix()] = _copy(tar.extractfile(member), into / path if into else None)
                if into:
                    os.utime(into / path, (member.mtime, member.mtime))
    except (tarfile.TarError, zlib.error, EOFError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BackupError(f"{file}: the archive is corrupted" + (f" at member {name}" if name else "") +
                          f" ({error}): restore another backup") from None
    try:
        if manifest["format"] != FORMAT:
            raise KeyError("format")
        expected = {m["path"]: m for m in manifest["members"]}
        places = [PurePosixPath(manifest[key]) for key in ("tracking_db", "artifact_root", "products")]
    except (KeyError, TypeError):
        raise BackupError(f"{file}: no {MANIFEST} of format {FORMAT}: not an mlops-nb backup") from None
    problems = [f"member {p}: not in the manifest (an extra member)" for p in seen if p not in expected]
    problems += [f"member {p}: its size or SHA-256 differs from the manifest (corrupted)"
                 for p, (size, sha256) in seen.items() if p in expected and
                 (size, sha256) != (expected[p]["size"], expected[p]["sha256"])]
    problems += [f"member {p}: in the manifest, missing from the archive" for p in expected if p not in seen]
    problems += [f"the manifest's {place} lies outside the project" for place in places
                 if place.is_absolute() or ".." in place.parts]
    bento = manifest.get("bento")
    for needed in [f"{PROJECT}/{manifest['tracking_db']}", *([bento.get("member")] if bento else [])]:
        if needed not in expected:
            problems.append(f"the manifest's {needed!r} is not one of its members")
    if problems:
        raise BackupError(f"{file}: refused, " + "; ".join(problems))
    return manifest


def verify(file: Path | str) -> dict:
    """Check every member of a backup against its manifest without writing anything; return the manifest."""
    return _read(Path(file), None)


def _import_bento(bento: Path, dest: Path, staged: Path) -> str:
    """`bentoml import` the bento into the BentoML home in effect ($BENTOML_HOME, else ~/bentoml; one inside `dest`
    is filled in its staged place); return the home, with a note when the bento was there already."""
    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")).absolute()
    target = staged / home.relative_to(dest) if home.is_relative_to(dest) else home
    command = [str(Path(sys.executable).parent / "bentoml"), "import", str(bento)]
    done = subprocess.run(command, env={**os.environ, "BENTOML_HOME": str(target)}, capture_output=True, text=True)
    if done.returncode != 0 and "already exists" not in done.stdout + done.stderr:
        raise BackupError(f"`bentoml import {bento.name}` into {home} failed: {(done.stdout + done.stderr)[-2000:]}")
    return str(home) + (" (it was there already)" if done.returncode != 0 else "")


def _relocate_files(paths, old: str, new: str) -> None:
    """Rewrite the absolute paths into the old project folder that these text files hold (JSON products, ploomber's
    records, MLflow's MLmodel files), keeping their modification times."""
    pattern = re.compile(re.escape(old) + r'(?=[/"\s]|$)', re.MULTILINE)
    for path in paths:
        text = path.read_text()
        if old in text:
            stat = path.stat()
            path.write_text(pattern.sub(lambda _: new, text))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def restore(file: Path | str, dest: Path | str) -> dict:
    """Restore a backup into `dest` (absent or empty): every member is checked against the manifest in a temporary
    folder beside `dest` first, and nothing reaches `dest` unless all pass; the registry's artifact locations move
    to `dest` and the bento is imported into the BentoML home. Returns the manifest, with `bento_home` added."""
    file, dest = Path(file).resolve(), Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} is not an empty folder: restore into a new or empty one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restoring-", dir=dest.parent))
    try:
        manifest = _read(file, staging)
        project = staging / PROJECT
        relocate_artifacts(project / manifest["tracking_db"], Path(manifest["root"]), dest)
        products, artifacts = project / manifest["products"], project / manifest["artifact_root"]
        _relocate_files([*products.rglob("*.json"), *products.rglob(".*.metadata"), *artifacts.rglob("MLmodel")],
                        manifest["root"], str(dest))
        bento = manifest["bento"]
        manifest["bento_home"] = _import_bento(staging / bento["member"], dest, project) if bento else None
        os.replace(project, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
