"""Is the nbdev export current? The one check that a build (before any task) and CI run."""

from __future__ import annotations

import filecmp
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StaleExport", "StaleExportError", "stale_exports", "check_exports", "FIX"]

FIX = "nbdev-export"


@dataclass(frozen=True)
class StaleExport:
    """A module that differs from what its notebook's `#| export` cells give (or that they give and is missing)."""

    notebook: str
    module: str

    def __str__(self) -> str:
        return f"{self.module} is stale: {self.notebook} exports something else"


class StaleExportError(RuntimeError):
    """The exported modules do not match the notebooks; nothing was run."""


def _nbdev_folders(root: Path) -> tuple[Path, Path] | None:
    pyproject = root / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text()).get("tool", {}).get("nbdev") if pyproject.is_file() else None
    return (Path(config.get("nbs_path", "nbs")), Path(config["lib_path"])) if config and "lib_path" in config else None


def stale_exports(root: Path | str) -> list[StaleExport]:
    """Export every notebook of the nbdev project at `root` into a temporary copy and compare with the library."""
    from nbdev.export import nb_export

    root = Path(root)
    folders = _nbdev_folders(root)
    if folders is None:
        return []
    nbs, lib = folders
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in sorted((root / nbs).glob("*.ipynb")):
            # the same layout as the project's, so each module's header names the same relative path
            copy, out = Path(tmp) / nbs / notebook.name, Path(tmp) / lib
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, copy)
            shutil.rmtree(out, ignore_errors=True)
            nb_export(str(copy), lib_path=str(out))
            for module in sorted(out.rglob("*.py")):
                mine = root / lib / module.relative_to(out)
                if not (mine.is_file() and filecmp.cmp(module, mine, shallow=False)):
                    stale.append(StaleExport(str(nbs / notebook.name), str(mine.relative_to(root))))
    return stale


def check_exports(root: Path | str) -> None:
    """Raise `StaleExportError` naming each stale module, its notebook and the command that fixes it."""
    stale = stale_exports(root)
    if stale:
        raise StaleExportError("the exported library is stale, so a build would train with the notebook's code and "
                               "serve with the old module:\n  " + "\n  ".join(map(str, stale)) +
                               f"\nrun `{FIX}` in {root} (and commit the result), then build again")
