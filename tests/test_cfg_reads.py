"""Settings are read at build time: ``cfg`` is read only in the edge functions.

An edge function is one whose job is to turn the config into plain values: ``from_config``,
``build_*``, ``finalize_config``, ``*_from_cfg`` and the config extensions (``add_*config*``). Any
other read of ``cfg.X`` (or ``self.cfg.X``) in ``trainers/``, ``datasets/`` or ``clip/`` is listed
here with the reason it stays; a new one fails this test. Run ``python tests/test_cfg_reads.py`` to
print every read with its file, line and function.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
EDGE = re.compile(r"^(from_config|build_.*|finalize_config|.*_from_cfg|_?add_.*config.*)$")
PACKAGES = ("trainers", "datasets", "clip")


def cfg_reads(path: Path) -> List[Tuple[str, int, str]]:
    """(file, line, enclosing function path) of each ``cfg.X`` / ``self.cfg.X`` read outside edge functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = str(path.relative_to(ROOT))
    out: List[Tuple[str, int, str]] = []

    def visit(node: ast.AST, stack: List[str]) -> None:
        for child in ast.iter_child_nodes(node):
            st = stack + [child.name] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else stack
            if isinstance(child, ast.Attribute) and not isinstance(child.ctx, ast.Store):
                v = child.value
                is_cfg = (isinstance(v, ast.Name) and v.id == "cfg") or (
                    isinstance(v, ast.Attribute) and v.attr == "cfg"
                    and isinstance(v.value, ast.Name) and v.value.id == "self")
                if is_cfg and not any(EDGE.match(f) for f in st):
                    out.append((rel, child.lineno, ".".join(st) or "<module>"))
                    continue
            visit(child, st)

    visit(tree, [])
    return out


def all_reads() -> List[Tuple[str, int, str]]:
    reads: List[Tuple[str, int, str]] = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            reads += cfg_reads(path)
    return reads


#: reads that stay outside edge functions: (file, function) -> why. Each is called once, while the
#: trainer is being built, before the objects that would hold the value exist.
ALLOWED = {
    # the engine asks for the precision before it builds the model (autocast and GradScaler depend on it)
    ("trainers/engine/trainer.py", "precision_setting"): "engine default: TRAINER.PREC is read before build_model",
    ("trainers/clip_prompting/coop.py", "precision_setting"): "CoOp/CoCoOp keep Dassl's TRAINER.<NODE>.PREC",
    ("trainers/clip_prompting/linear_probe.py", "precision_setting"): "same key as CoOp, read before build_model",
    ("trainers/clip_prompting/zsclip.py", "precision_setting"): "same key as CoOp, read before build_model",
    ("trainers/vega/trainer.py", "precision_setting"): "VEGA's precision key, read before build_model",
    # one-line accessors of a method's own config node, called only from its build_* functions
    ("trainers/cnn/base.py", "node"): "accessor of TRAINER.<NODE>, used by build_model/build_hooks",
    ("trainers/emocoop/trainer.py", "node"): "accessor of TRAINER.EMOCOOP, used by build_* and precision_setting",
    ("trainers/uniemox/finetune.py", "node"): "accessor of TRAINER.UNIEMOX, used by build_*",
    ("trainers/uniemox/pretrain.py", "node"): "accessor of TRAINER.UNIEMOX_PRETRAIN, used by build_*",
    # config checks run by finalize_config, before anything is built
    ("trainers/emocoop/config.py", "check_emocoop_config"): "validation at finalize time",
    ("trainers/evaluation/regression.py", "class_va_from_config"): "builds the evaluator's class VA table",
    # the conversation features' node: a config-extension helper and the path rule a subclass overrides
    ("datasets/conversation/features.py", "conversation_node"): "config extension helper",
    ("datasets/conversation/features.py", "features_path"): "path rule overridden by the synthetic dataset",
}


def test_counter_finds_reads_and_skips_edges(tmp_path, monkeypatch):
    src = (
        "def from_config(cfg):\n    return cfg.A.B\n"
        "def build_model(self):\n    return self.cfg.X\n"
        "def train(self):\n    return self.cfg.OPTIM.LR + cfg.TEST.Y\n"
    )
    p = ROOT / "tests" / "_cfg_probe_tmp.py"
    try:
        p.write_text(src, encoding="utf-8")
        found = cfg_reads(p)
    finally:
        p.unlink()
    assert [(line, fn) for _, line, fn in found] == [(6, "train"), (6, "train")]


def test_cfg_reads_outside_edges_are_the_listed_ones():
    reads = all_reads()
    unlisted = [f"{f}:{l} in {fn}" for f, l, fn in reads if (f, fn.split(".")[-1]) not in ALLOWED]
    assert not unlisted, "cfg read outside an edge function (read it at build time, or list it with a reason):\n" + \
        "\n".join(unlisted)
    stale = sorted(set(ALLOWED) - {(f, fn.split(".")[-1]) for f, _, fn in reads})
    assert not stale, f"ALLOWED lists functions that no longer read cfg: {stale}"

if __name__ == "__main__":  # pragma: no cover - a listing for people
    rows = all_reads()
    for f, l, fn in rows:
        print(f"{f}:{l}  {fn}")
    print(f"{len(rows)} reads outside edge functions", file=sys.stderr)
