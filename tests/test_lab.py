"""JupyterLab as README starts it (`mlops-nb lab`): every notebook lists and opens through the contents API,
ploomber's broken server extension and its cloud-share lab extension stay off, and a save changes nothing."""

import json
import re
from types import SimpleNamespace

import httpx
import pytest
from conftest import REPO, copy_project, git_status, jupyter_lab, server_errors

from mlops_nb.notebook_clean import KERNELSPEC, language_info

NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("lab") / "project")
    log = root.parent / "jupyter.log"
    with jupyter_lab(root, log) as (url, token):
        yield SimpleNamespace(root=root, url=url, headers={"Authorization": f"token {token}"}, log=log)


def test_the_contents_api_lists_and_reads_every_notebook(lab):
    listing = httpx.get(f"{lab.url}/api/contents/notebooks", headers=lab.headers, timeout=30)
    assert listing.status_code == 200, listing.text
    assert sorted(i["name"] for i in listing.json()["content"] if i["type"] == "notebook") == NOTEBOOKS
    for name in NOTEBOOKS:
        model = httpx.get(f"{lab.url}/api/contents/notebooks/{name}", headers=lab.headers, timeout=30)
        assert model.status_code == 200, model.text
        assert model.json()["type"] == "notebook" and model.json()["content"]["cells"]
    assert server_errors(lab.log) == []


def test_ploomber_extensions_stay_off(lab):
    log = lab.log.read_text()
    assert "ploomber | extension was successfully" not in log and "ploomber_extension" not in log
    page = httpx.get(f"{lab.url}/lab", headers=lab.headers, timeout=30).text
    config = json.loads(re.search(r'id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert "ploomber-extension" in config["disabledExtensions"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_save_of_an_opened_and_run_notebook_leaves_git_clean(lab, name):
    url = f"{lab.url}/api/contents/notebooks/{name}"
    notebook = httpx.get(url, headers=lab.headers, timeout=30).json()["content"]
    # what JupyterLab's model holds after opening and running: the kernel's metadata, execution counts
    notebook["metadata"].update(kernelspec=dict(KERNELSPEC), language_info=language_info(),
                                jupytext={"cell_metadata_filter": "tags,-all"})
    for count, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = count + 1
        cell["metadata"]["scrolled"] = True
    saved = httpx.put(url, headers=lab.headers, json={"type": "notebook", "format": "json", "content": notebook},
                      timeout=30)
    assert saved.status_code == 200, saved.text
    assert git_status(lab.root) == ""


def test_plain_jupyter_lab_lists_and_opens_the_notebooks_too(tmp_path):
    root = copy_project(tmp_path / "project")
    log = tmp_path / "plain-lab.log"
    with jupyter_lab(root, log, plain=True) as (url, token):
        listing = httpx.get(f"{url}/api/contents/notebooks", params={"token": token}, timeout=30)
        assert listing.status_code == 200, log.read_text()[-3000:]
        names = sorted(item["name"] for item in listing.json()["content"])
        assert names == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
        opened = httpx.get(f"{url}/api/contents/notebooks/{names[0]}", params={"token": token}, timeout=30)
        assert opened.status_code == 200 and opened.json()["type"] == "notebook"
    assert server_errors(log) == []
