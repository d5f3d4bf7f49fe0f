"""The light half of ``train.py``: everything a command can answer or refuse without torch.

``--help``, ``--list trainers|datasets|configs|clip-models`` and ``--print-config`` are answered
here, and every check that needs no data and no model (flag order, config values, the output
folder, ``--resume`` / ``--model-dir`` / ``--load-epoch`` on disk, GPU-only settings) runs here
before ``train.py`` imports the trainers. Nothing in this module imports torch: the trainers and
datasets are read from their source files (their ``@..._REGISTRY.register`` lines and their
``@register_config`` functions), and ``tests/test_newcomer.py`` checks that what is read this
way equals what importing the packages registers.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import functools
import hashlib
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from utils.errors import ConfigError

#: the repository root (the folder holding ``configs/``)
ROOT = Path(__file__).resolve().parent.parent
#: the value of OUTPUT_DIR when nothing set it (configs/defaults.py)
DEFAULT_OUTPUT = "./output"
LISTS = ("trainers", "datasets", "configs", "clip-models")
#: architectures OpenAI released (their spelling); any open_clip architecture name also works
OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")

EXAMPLES = """examples:
  python train.py --list trainers            # also: datasets, configs, clip-models
  python train.py --root data --trainer CoOp \\
      --dataset-config-file configs/datasets/synthetic_emotion.yaml \\
      --config-file configs/trainers/CoOp/tiny_synthetic.yaml \\
      --output-dir output/coop --seed 1 DATASET.NUM_SHOTS 4
  python train.py --eval-only --model-dir output/coop     # the run's final test again, from its config.yaml
  python train.py --print-config --trainer CoOp OPTIM.LR 0.01   # the merged config; nothing is built

Flags come first, KEY VALUE config overrides last. Without --output-dir a run writes to
output/<dataset>/<trainer>/<config>/seed<SEED> and an evaluation to <model dir>/eval/<time>.
Docs: README.md and docs/."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: ... (see train.py --help)``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="train.py", description="EmoLab: train or evaluate any registered trainer on any registered dataset.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=str, default=None, help="path to the dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default=None,
                   help="output directory (OUTPUT_DIR; default output/<dataset>/<trainer>/<config>/seed<SEED>)")
    p.add_argument("--resume", type=str, default=None,
                   help="run folder to resume from (RESUME; must exist); a run resumes from its own folder anyway")
    p.add_argument("--seed", type=int, default=None, help="random seed; any value >= 0 (0 included) is used")
    p.add_argument("--source-domains", type=str, nargs="+", default=None, help="source domains (Dassl)")
    p.add_argument("--target-domains", type=str, nargs="+", default=None, help="target domains (Dassl)")
    p.add_argument("--transforms", type=str, nargs="+", default=None, help="training transforms (INPUT.TRANSFORMS)")
    p.add_argument("--config-file", type=str, default="", help="trainer config yaml (see --list configs)")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config yaml (see --list configs)")
    p.add_argument("--trainer", type=str, default="", help="trainer name (TRAINER.NAME; see --list trainers)")
    p.add_argument("--backbone", type=str, default="", help="backbone name (MODEL.BACKBONE.NAME)")
    p.add_argument("--head", type=str, default="", help="head name (MODEL.HEAD.NAME)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate only; with --model-dir RUN the config is RUN/config.yaml unless config files are "
                        "given (flags and KEY VALUE pairs still override) and the outputs go to RUN/eval/<time>")
    p.add_argument("--model-dir", type=str, default="", help="the run folder (or checkpoint) --eval-only loads")
    p.add_argument("--load-epoch", type=int, default=None,
                   help="epoch of the checkpoint --eval-only loads (default: the checkpoint the run's final test "
                        "used, from its run_state.json; for older runs model-best.pth.tar, else the latest)")
    p.add_argument("--no-train", action="store_true", help="build the data and the model, train nothing")
    p.add_argument("--restart", action="store_true",
                   help="start over in an OUTPUT_DIR that holds a run (its checkpoints and metrics are removed)")
    p.add_argument("--require-gpu", action="store_true",
                   help="stop unless a CUDA GPU is usable (TRAIN.REQUIRE_GPU True); by default a run without a GPU "
                        "trains on the CPU")
    p.add_argument("--print-config", action="store_true",
                   help="print the merged config (defaults, yaml files, flags, KEY VALUE pairs) and exit; builds nothing")
    p.add_argument("--list", choices=LISTS, default=None, metavar="{" + ",".join(LISTS) + "}",
                   help="list what exists and exit")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers trainers, components, datasets or evaluators "
                        "(repeatable; also $EMOLAB_IMPORT, comma-separated)")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    return p


# ------------------------------------------------------------------------------------ reading the sources
def _module_files(package: str) -> List[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _literals(tree: ast.Module) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                pass
    return out


def _registry_of(call: ast.AST) -> Optional[str]:
    """``TRAINER_REGISTRY`` for a ``TRAINER_REGISTRY.register(...)`` call (or the attribute itself)."""
    if isinstance(call, ast.Call):
        call = call.func
    if isinstance(call, ast.Attribute) and call.attr == "register" and isinstance(call.value, ast.Name):
        return call.value.id
    return None


def _name_kw(call: ast.AST, consts: Dict[str, Any], loop: Dict[str, Any]) -> Optional[List[str]]:
    if not isinstance(call, ast.Call):
        return None
    for kw in call.keywords:
        if kw.arg == "name":
            if isinstance(kw.value, ast.Constant):
                return [kw.value.value]
            if isinstance(kw.value, ast.Name) and kw.value.id in loop:
                return list(loop[kw.value.id])
    if len(call.args) >= 2 and isinstance(call.args[1], ast.Constant):
        return [call.args[1].value]
    return None


def registered_in_sources(registry: str, packages: Sequence[str] = ("trainers", "datasets")) -> Dict[str, str]:
    """``{name: first docstring line}`` of what ``registry`` (e.g. ``TRAINER_REGISTRY``) registers in
    the project's source files, read without importing them."""
    found: Dict[str, str] = {}
    for pkg in packages:
        for path in _module_files(pkg):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            consts = _literals(tree)
            docs = {n.name: (ast.get_docstring(n) or "").strip().split("\n")[0]
                    for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
            for node in tree.body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    for dec in node.decorator_list:
                        if _registry_of(dec) == registry:
                            for name in _name_kw(dec, consts, {}) or [node.name]:
                                found[name] = docs.get(node.name, "")
                calls: List[Tuple[ast.AST, Dict[str, Any]]] = []
                if isinstance(node, ast.Expr):
                    calls.append((node.value, {}))
                elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                    try:
                        values = (consts.get(node.iter.id, ()) if isinstance(node.iter, ast.Name)
                                  else ast.literal_eval(node.iter))
                    except (ValueError, TypeError, SyntaxError):
                        values = ()
                    calls += [(s.value, {node.target.id: values}) for s in node.body if isinstance(s, ast.Expr)]
                for call, loop in calls:
                    if _registry_of(call) == registry and isinstance(call, ast.Call) and call.args:
                        obj = call.args[0].id if isinstance(call.args[0], ast.Name) else "?"
                        for name in _name_kw(call, consts, loop) or [obj]:
                            found[name] = docs.get(obj, "")
    return found


def _is_register_config(dec: ast.AST) -> bool:
    return (isinstance(dec, ast.Name) and dec.id == "register_config") or (
        isinstance(dec, ast.Attribute) and dec.attr == "register_config")


#: modules imported for real by the static reader (torch-free); project modules are read statically
_REAL_IMPORTS = ("__future__", "yacs", "typing", "dataclasses", "json", "math", "os", "re", "logging",
                 "collections", "enum", "functools", "pathlib", "utils.errors", "utils.registry", "configs")
_PROJECT = ("datasets", "trainers", "clip")


def _static_module(modname: str, memo: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A namespace of the module ``modname`` built from its source without importing it: its
    torch-free imports, and each top-level definition that can be made from them (one statement at
    a time; a statement that needs torch, or runs code, is left out)."""
    if modname in memo:
        return memo[modname]
    parts = modname.split(".")
    path = ROOT.joinpath(*parts).with_suffix(".py")
    if not path.is_file():
        path = ROOT.joinpath(*parts, "__init__.py")
    # a module object of another name (never the real one's) so that dataclasses resolve their annotations
    shadow = types.ModuleType("_emolab_static." + modname)
    sys.modules[shadow.__name__] = shadow
    namespace: Dict[str, Any] = shadow.__dict__
    namespace["__file__"] = str(path)
    memo[modname] = namespace
    if not path.is_file():
        return namespace
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            top = mod.split(".")[0]
            if top == "utils" and mod not in _REAL_IMPORTS:
                continue
            if top in _PROJECT:
                for alias in node.names:
                    src = _static_module(mod, memo)
                    if alias.name in src:
                        namespace[alias.asname or alias.name] = src[alias.name]
                    elif ROOT.joinpath(*mod.split("."), alias.name).exists() or \
                            ROOT.joinpath(*mod.split("."), alias.name + ".py").exists():
                        continue
                continue
            if top not in _REAL_IMPORTS:
                continue
            node = ast.ImportFrom(module=mod, names=node.names, level=0)
            ast.copy_location(node, tree.body[0])
        elif isinstance(node, ast.Import):
            if not all(a.name in _REAL_IMPORTS or a.name.split(".")[0] in _REAL_IMPORTS[:-3] for a in node.names):
                continue
        elif isinstance(node, ast.FunctionDef):
            node.decorator_list = [d for d in node.decorator_list if not _is_register_config(d)]
        elif not isinstance(node, (ast.Assign, ast.AnnAssign, ast.ClassDef)):
            continue
        try:
            exec(compile(ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[])), str(path), "exec"),
                 namespace)
        except Exception:  # noqa: BLE001  (a definition that needs what is not read here is left out)
            pass
    return namespace


@functools.lru_cache(maxsize=None)
def static_config_extensions() -> Tuple[Tuple[str, Callable], ...]:
    """The project's ``@register_config`` functions, read from their source files without running
    the modules (see :func:`_static_module`)."""
    memo: Dict[str, Dict[str, Any]] = {}
    out: List[Tuple[str, Callable]] = []
    for pkg in ("datasets", "trainers"):
        for path in _module_files(pkg):
            text = path.read_text(encoding="utf-8")
            if "register_config" not in text:
                continue
            wanted = [n.name for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)
                      and any(_is_register_config(d) for d in n.decorator_list)]
            if not wanted:
                continue
            namespace = _static_module(_module_name(path), memo)
            for name in wanted:
                if name not in namespace:
                    raise ConfigError(f"cannot read the config extension {name} in {path} without importing it")
                out.append((name, namespace[name]))
    return tuple(out)


def light_cfg():
    """The default config with every project extension, built without importing torch (the same
    keys and values as ``trainers.get_cfg()``, which ``tests/test_newcomer.py`` checks)."""
    from .defaults import get_cfg_default

    cfg = get_cfg_default()
    for _, fn in sorted(static_config_extensions(), key=lambda kv: kv[0]):
        fn(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ listing
def list_lines(kind: str) -> List[str]:
    """The lines ``--list KIND`` prints."""
    if kind == "trainers":
        items = registered_in_sources("TRAINER_REGISTRY", ("trainers",))
        cfgs = {p.name: sorted(q.name for q in p.glob("*.yaml"))
                for p in (ROOT / "configs" / "trainers").iterdir() if p.is_dir()}
        return [f"{n:18s} {items[n]}" + (f"  [configs/trainers/{n}/: {', '.join(cfgs[n])}]" if cfgs.get(n) else "")
                for n in sorted(items)]
    if kind == "datasets":
        items = registered_in_sources("DATASET_REGISTRY", ("datasets",))
        return [f"{n:26s} {items[n]}" for n in sorted(items)]
    if kind == "configs":
        lines = []
        for sub in ("datasets", "trainers"):
            for p in sorted((ROOT / "configs" / sub).rglob("*.yaml")):
                first = _first_comment(p)
                lines.append(str(p.relative_to(ROOT)) + (f"  # {first}" if first else ""))
        return lines
    if kind == "clip-models":
        project = sorted(p.stem for p in (ROOT / "configs" / "clip_models").glob("*.json"))
        return ([f"{n:18s} project architecture (configs/clip_models/{n}.json)" for n in project]
                + [f"{n:18s} OpenAI release" for n in OPENAI_MODELS]
                + ["(any open_clip architecture name also works: python -c \"import open_clip; "
                   "print(open_clip.list_models())\")"])
    raise ConfigError(f"--list {kind}: choose one of {', '.join(LISTS)}")


def _first_comment(path: Path) -> str:
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            s = line.strip()
            if s.startswith("#"):
                return s.lstrip("# ").strip()
            if s:
                return ""
    except OSError:
        pass
    return ""


# ----------------------------------------------------------------------------------------- early checks
def check_opts_order(opts: Sequence[str]) -> None:
    """A flag among the trailing KEY VALUE pairs (``DATASET.NUM_SHOTS 4 --trainer CoOp``): argparse
    hands it over as a config key; say what to do instead."""
    for i, tok in enumerate(opts):
        if tok.startswith("--") and tok != "--":
            first = next((o for o in opts if not o.startswith("--")), "")
            raise ConfigError(f"flag {tok} comes after the KEY VALUE pair(s) starting at {first!r}: put every flag "
                              f"first, KEY VALUE pairs last (train.py {tok} ... {first} ...)")


def default_output_dir(cfg, args) -> str:
    """``output/<dataset>/<trainer>/<config>/seed<SEED>``: one folder per command (the KEY VALUE pairs
    add a short hash), so rerunning a command resumes it and two commands never share a folder."""
    config = Path(args.config_file).stem if args.config_file else "default"
    opts = [o for o in (args.opts or []) if o != "--"]
    if opts:
        config += "-" + hashlib.sha1(" ".join(opts).encode()).hexdigest()[:6]
    seed = f"seed{cfg.SEED}" if cfg.SEED >= 0 else "noseed"
    return os.path.join("output", _slug(cfg.DATASET.NAME or "dataset"), _slug(cfg.TRAINER.NAME or "trainer"),
                        _slug(config), seed)


def eval_output_dir(model_dir: str) -> str:
    """``<model dir>/eval/<time>``: an evaluation never writes over the training's files."""
    base = model_dir if os.path.isdir(model_dir) else os.path.dirname(os.path.abspath(model_dir))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(base, "eval", stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, "eval", f"{stamp}-{n}")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "x"


_CKPT = re.compile(r"^model\.pth\.tar-(\d+)$")


def checkpoint_epochs(model_dir: str) -> Dict[str, List[int]]:
    """``{module: [epochs]}`` of the Dassl checkpoint files under ``model_dir`` (``model-best`` as 0)."""
    out: Dict[str, List[int]] = {}
    if not os.path.isdir(model_dir):
        return out
    for name in sorted(os.listdir(model_dir)):
        sub = os.path.join(model_dir, name)
        if not os.path.isdir(sub) or name in ("eval", "plots", "tensorboard"):
            continue
        eps = []
        for f in os.listdir(sub):
            m = _CKPT.match(f)
            if m:
                eps.append(int(m.group(1)))
            elif f == "model-best.pth.tar":
                eps.append(0)
        if eps:
            out[name] = sorted(eps)
    return out


def check_model_dir(model_dir: str, load_epoch: Optional[int]) -> None:
    """``--model-dir`` holds checkpoints, and the ``--load-epoch`` asked for (one line naming what is there)."""
    if not os.path.exists(model_dir):
        raise ConfigError(f"no run to evaluate in {model_dir}: name the run folder with --model-dir RUN "
                          "(or the --output-dir it was trained with)")
    if not os.path.isdir(model_dir):
        return  # a checkpoint file (UniEmoX's released weights): the trainer reads it
    found = checkpoint_epochs(model_dir)
    if not found:
        if os.path.isfile(os.path.join(model_dir, "config.yaml")):
            raise ConfigError(f"--model-dir {model_dir} holds a run's config.yaml but no checkpoint (model.pth.tar-N) "
                              "in any module folder: the run saved none (TRAIN.CHECKPOINT_FREQ / TEST.FINAL_MODEL), "
                              "or it is not finished")
        return  # a trainer without trainable modules (ZeroshotCLIP) has nothing to load
    if load_epoch is not None:
        missing = [m for m, eps in found.items() if load_epoch not in eps]
        if missing:
            have = sorted({e for eps in found.values() for e in eps if e > 0})
            raise ConfigError(f"checkpoint not found: {os.path.join(model_dir, missing[0])}/model.pth.tar-{load_epoch} "
                              f"(--load-epoch {load_epoch}; saved epochs: {', '.join(map(str, have)) or 'none'}"
                              f"{', and model-best.pth.tar' if any(0 in e for e in found.values()) else ''})")


def check_paths(cfg) -> None:
    """The dataset root of a dataset that is read, not generated (``Synthetic*`` datasets make their files)."""
    root = str(cfg.DATASET.ROOT or "")
    name = str(cfg.DATASET.NAME)
    if name.startswith("Synthetic") or "Features" in name or "Conversation" in name:
        return  # generated on first use, or files named by their own keys
    if root and not os.path.isdir(os.path.expanduser(root)):
        raise ConfigError(f"dataset folder not found: {root} (DATASET.ROOT; set it with --root)")


def changed_keys(saved_path: str, cfg, ignore: Sequence[str] = ("OUTPUT_DIR", "RESUME")) -> List[str]:
    """``KEY saved -> now`` for each key whose value differs between a run's ``config.yaml`` and ``cfg``."""
    import yaml

    from .config import flatten

    with open(saved_path, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}

    def flat(d: Any, prefix: str = "") -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + str(k)] = list(v) if isinstance(v, (list, tuple)) else v
        return out

    a = flat(saved)
    out = []
    for k, v in flatten(cfg):
        v = list(v) if isinstance(v, (list, tuple)) else v
        if k in a and k not in ignore and a[k] != v:
            out.append(f"{k} {a[k]!r} -> {v!r}")
    return out


def cuda_usable() -> Optional[bool]:
    """Whether a CUDA device looks usable, decided without importing torch when possible: None means
    "cannot tell here" (torch decides later)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0") or os.path.exists("/dev/dxg"):
        return None
    return False


def check_device(cfg, require_gpu: bool) -> List[str]:
    """Stop on a required GPU that is not there; return the warnings for GPU-only settings on a CPU."""
    usable = cuda_usable() if cfg.USE_CUDA else False
    if require_gpu and usable is False:
        why = "USE_CUDA is False" if not cfg.USE_CUDA else "no CUDA device on this machine"
        raise ConfigError(f"a GPU is required (--require-gpu / TRAIN.REQUIRE_GPU) but {why}: run on a GPU "
                          "machine, or drop --require-gpu to train on the CPU")
    warnings = []
    if usable is False:
        if str(cfg.DATALOADER.DECODED_CACHE).lower() == "gpu":
            raise ConfigError("DATALOADER.DECODED_CACHE gpu needs a CUDA device and this run has none: use memory, "
                              "disk or auto")
        from .config import flatten

        defaults = dict(flatten(light_cfg()))
        for key, value in flatten(cfg):  # TRAIN.PRECISION and the CoOp family's TRAINER.<NAME>.PREC, as set
            if (key == "TRAIN.PRECISION" or (key.endswith(".PREC") and value != defaults.get(key))) \
                    and str(value).lower() in ("fp16", "amp"):
                warnings.append(f"{key} {value} has no effect without a GPU: this run computes in fp32 on the CPU")
    return warnings


def check_names(cfg) -> None:
    """TRAINER.NAME and DATASET.NAME against what the source files register (with "did you mean")."""
    from utils.registry import Registry

    for kind, key, registry, pkg in (("trainer", "TRAINER.NAME", "TRAINER_REGISTRY", "trainers"),
                                     ("dataset", "DATASET.NAME", "DATASET_REGISTRY", "datasets")):
        reg = Registry(kind)
        names = set(registered_in_sources(registry, (pkg,)))
        live = sys.modules.get("trainers.registry" if kind == "trainer" else "datasets.base")
        if live is not None and hasattr(live, registry):  # imported already (a notebook, a test): its names too
            names |= set(getattr(live, registry).names())
        for name in sorted(names):
            reg.register(object(), name=name)
        value = cfg.TRAINER.NAME if kind == "trainer" else cfg.DATASET.NAME
        reg.get(value)


#: the package each tracker needs (TRAIN.LOGGERS) and how to install it
TRACKER_PACKAGES = {"wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow-skinny")}


def check_loggers(cfg) -> None:
    """A tracker asked for in TRAIN.LOGGERS whose package is missing: one line naming the install."""
    import importlib.util

    for name in cfg.TRAIN.LOGGERS:
        if name in TRACKER_PACKAGES:
            module, how = TRACKER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"TRAIN.LOGGERS asks for {name} but {module} is not installed: {how} "
                                  f"(or drop {name} from TRAIN.LOGGERS)")
