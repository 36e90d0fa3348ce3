import os

import pytest

from mlops_nb.products import atomic_path, read_json, write_json


def test_products_are_written_atomically_with_normal_permissions(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "p.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "p.txt") as tmp:
        tmp.write_text("whole")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "p.txt").read_text() == "whole"
    assert (tmp_path / "p.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_json_products_round_trip_and_a_missing_one_says_what_to_run(tmp_path):
    write_json(tmp_path / "a/b.json", {"z": 1, "a": [1, 2]})
    assert read_json(tmp_path / "a/b.json") == {"z": 1, "a": [1, 2]}
    with pytest.raises(FileNotFoundError, match="run the task that produces it"):
        read_json(tmp_path / "missing.json")
