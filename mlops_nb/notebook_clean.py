"""The project's notebook clean step: nbdev's cleaning, with kernel metadata as the kernel reports it."""

# nbdev-clean strips execution counts, cell metadata other than tags, and notebook metadata other than the
# kernelspec, but it rewrites the kernelspec's display name to the kernel's name and drops `language_info`; the
# kernel then reports different values when JupyterLab opens the notebook, which marks it modified. This step
# keeps both as the project's kernel reports them. JupyterLab runs it before every save (see
# .jupyter/jupyter_server_config.json); `mlops-nb clean` runs it on files.

from __future__ import annotations

import platform
from pathlib import Path

import nbformat

__all__ = ["KERNELSPEC", "language_info", "clean_notebook", "clean_file", "pre_save_hook"]

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def language_info() -> dict:
    """`language_info` as ipykernel reports it for this Python."""
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": platform.python_version()}


def clean_notebook(notebook: dict) -> dict:
    """Clean a notebook (nbformat dict) in place with nbdev's rules and the project's kernel metadata."""
    from nbdev.clean import clean_nb
    from nbdev.config import get_config

    config = get_config()
    clean_nb(notebook, clear_all=config.clear_all, allowed_metadata_keys=config.get("allowed_metadata_keys") or [],
             allowed_cell_metadata_keys=config.get("allowed_cell_metadata_keys") or [], clean_ids=config.clean_ids,
             allowed_out_metadata_keys=config.get("allowed_out_metadata_keys") or [])
    notebook["metadata"].pop("jupytext", None)  # written by jupytext's contents manager; nothing reads it
    notebook["metadata"]["kernelspec"] = dict(KERNELSPEC)
    notebook["metadata"]["language_info"] = language_info()
    return notebook


def _text(notebook) -> str:
    """A notebook as Jupyter's contents manager writes it."""
    return nbformat.writes(notebook) + "\n"


def clean_file(path: Path | str, *, check: bool = False) -> bool:
    """Clean a notebook file; True if it was not clean (with `check`, report only and leave it)."""
    path = Path(path)
    before = path.read_text(encoding="utf-8")
    after = _text(clean_notebook(nbformat.reads(before, as_version=nbformat.NO_CONVERT)))
    if after != before and not check:
        path.write_text(after, encoding="utf-8")
    return after != before


def pre_save_hook(model: dict, **kwargs) -> None:
    """Jupyter `ContentsManager.pre_save_hook`: clean every notebook before it is written."""
    if model.get("type") == "notebook" and model.get("content", {}).get("nbformat") == 4:
        clean_notebook(model["content"])
