"""The README's table of method names ("One method, its names") agrees with the trainer registry and the tree:
every registered trainer has a row, its class lives in the row's code folder, its config node exists, and
the config files in its config folder configure that node."""
from __future__ import annotations

import inspect
import os
import re
from typing import Dict, List

import pytest
import yaml

from conftest import ROOT, project_trainers
from trainers import TRAINER_REGISTRY, get_cfg

SECTION = "## One method, its names"
#: released files kept at their released path, configuring another trainer's node (named in the table)
KEPT_ELSEWHERE = {"configs/trainers/CoCoOp/vit_emotion.yaml": "EMOCOOP"}


def table_rows(text: str) -> List[Dict[str, str]]:
    """The rows of the first table after ``SECTION`` as dicts (cells without backticks)."""
    start = text.index(f"\n{SECTION}\n")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    header, rows = table[0], table[2:]
    return [dict(zip(header, r)) for r in rows]


@pytest.fixture(scope="module")
def rows() -> List[Dict[str, str]]:
    return table_rows(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())


def test_table_parser_reads_cells():
    text = f"x\n{SECTION}\n\nprose\n\n| a | b |\n|---|---|\n| `x/` | y |\n| 1 | 2 |\n\nafter | z |\n"
    assert table_rows(text) == [{"a": "x/", "b": "y"}, {"a": "1", "b": "2"}]


def test_every_registered_trainer_has_one_row_and_no_row_is_stale(rows):
    names = [r["trainer"] for r in rows]
    assert len(names) == len(set(names)), names
    assert sorted(names) == sorted(project_trainers())  # trainers test modules register are not methods


def test_each_trainer_lives_in_its_code_folder(rows):
    for r in rows:
        folder = os.path.join(ROOT, r["code folder"])
        assert os.path.isfile(os.path.join(folder, "__init__.py")), r["code folder"]
        source = os.path.realpath(inspect.getfile(TRAINER_REGISTRY.get(r["trainer"])))
        assert os.path.dirname(source) == os.path.realpath(folder.rstrip("/")), (r["trainer"], source)


def test_config_node_exists_and_the_config_folder_configures_it(rows):
    cfg = get_cfg()
    folders = set()
    for r in rows:
        node = re.fullmatch(r"TRAINER\.([A-Z_]+)", r["config node"]).group(1)
        assert node in cfg.TRAINER, r["config node"]
        folder = r["config folder"].rstrip("/")
        assert re.fullmatch(r"configs/trainers/[A-Za-z]+", folder) and folder.endswith("/" + r["trainer"]), folder
        files = sorted(f for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(".yaml"))
        assert files, f"{folder} has no config file"
        folders.add(folder)
        for f in files:
            rel = f"{folder}/{f}"
            with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
                trainer_keys = set((yaml.safe_load(fh) or {}).get("TRAINER") or {}) - {"NAME"}
            assert trainer_keys <= {KEPT_ELSEWHERE.get(rel, node)}, (rel, trainer_keys)
    on_disk = {f"configs/trainers/{d}" for d in os.listdir(os.path.join(ROOT, "configs/trainers"))
               if os.path.isdir(os.path.join(ROOT, "configs/trainers", d))}
    assert on_disk == folders
    # a kept file is named in the table next to the method it configures
    for rel, node in KEPT_ELSEWHERE.items():
        assert any(r["config node"] == f"TRAINER.{node}" and rel in r["kept name"] for r in rows), rel
