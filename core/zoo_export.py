"""Export a bundle as a self-contained MONAI Model Zoo zip, and the Model Zoo checks.

``export_bundle(bundle, out)`` writes ``<bundle>_v<version>.zip`` (version from
``configs/metadata.json``) holding one top folder ``<bundle>/`` that runs from its own folder, without
the ``ctbundles`` distribution installed (``../shared/REFERENCES.md`` section 4: "custom code lives in
its ``scripts/`` package or in pip packages pinned in ``required_packages_version``").

How the code travels (vendoring):

1. Roots: every ``ctbundles`` module named by any config of the bundle (``$import`` statements,
   ``_target_`` paths, dotted names inside ``$`` expressions) and by the bundle's own
   ``scripts/*.py``.
2. Closure: each module's source is parsed (``ast``) and every ``ctbundles`` module it references is
   followed transitively: ``import`` / ``from ... import`` at any level (function-local imports
   included, ``from pkg import submodule`` resolved to the sub-module), and string constants that
   are exactly a dotted module path (``"ctbundles.synthetic.ctp:generate_ctp_patient"``). The
   parent packages' ``__init__`` modules are added. Files are located with
   ``importlib.util.find_spec``, so the ``package_dir`` mapping of ``setup.cfg`` is respected.
3. Rewrite: each vendored module is copied to ``scripts/ctbundles/...`` and every reference to the
   top-level name ``ctbundles`` is rewritten to ``scripts.ctbundles`` at the positions ``ast``
   gives (import statements, the ``ctbundles`` name in expressions, module-path string constants
   and the constant head of f-strings such as ``f"ctbundles.commands.{name}"``). Docstrings,
   comments and prose are left alone. The exported configs get the same rewrite (``_target_``
   values, ``$`` expressions by ``tokenize``); ``$import ctbundles`` becomes ``$import scripts``
   (MONAI binds the name of a bare import only), and ``scripts/__init__.py`` imports
   ``scripts.ctbundles`` so that ``scripts.ctbundles...`` expressions resolve as before.
4. Third-party: the top-level modules imported by the vendored code and by the configs that are
   neither standard library nor ``ctbundles`` are mapped to their distributions
   (``importlib.metadata.packages_distributions``) and pinned in ``required_packages_version`` at
   the exact installed version (local labels such as ``+cpu`` dropped); the ``ctbundles`` entry is
   removed. Nothing else is listed.

Never copied: ``__pycache__``, ``*.pyc``, hidden files, tests, data (only modules are vendored).

The Model Zoo checks (``zoo_check``): required files, ``version`` in ``changelog``, metadata
against the zoo schema (``meta_schema_20240725.json``), exact pip versions, no ``ctbundles``
reference left in configs or scripts, files above 25 MB listed in ``large_files.yml`` with their
hash, ``python -m monai.bundle verify_net_in_out`` and ``python -m monai.bundle ckpt_export``
(TorchScript) in a subprocess from the bundle folder. ``onnx_export`` exports every network of the
inference config (``network_def``, ``<x>_network_def`` loading ``models/model_<x>.pt``) with
``torch.onnx.export`` (opset ``ONNX_OPSET``) and compares onnxruntime with eager PyTorch on random
input: max |onnx - eager| <= ``ONNX_ATOL`` x max(1, max |eager|).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tokenize
import zipfile
from pathlib import Path
from typing import Any, Iterable

from ctbundles.atomic_io import atomic_write, atomic_write_json, atomic_write_text
from ctbundles.errors import CTInputError

PACKAGE = "ctbundles"
VENDOR_PACKAGE = "scripts"
LARGE_FILE_BYTES = 25 * 1000 * 1000
"""Model Zoo limit: a file above 25 MB must be listed in ``large_files.yml``."""
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/logging.conf",
    "models/model.pt",
    "docs/README.md",
    "docs/data_license.txt",
    "LICENSE",
)
REQUIRED_METADATA = (
    "schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format", "name", "changelog",
)
SCHEMA_FILE = "meta_schema_20240725.json"
ONNX_OPSET = 17
ONNX_ATOL = 1e-4
_EXACT_VERSION = re.compile(r"^\d+(\.\d+)*([abc]|rc|\.post|\.dev)?\d*$")
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_][\w.]*)?$")
_SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", "eval", "runs"}


# --------------------------------------------------------------------------- module references


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _is_ours(name: str, package: str = PACKAGE) -> bool:
    return name == package or name.startswith(package + ".")


def _module_path_of(text: str, package: str = PACKAGE) -> str | None:
    """``text`` as a module path of ``package`` (``"a.b"``, ``"a.b:attr"``), else None."""
    if not _MODULE_PATH.match(text):
        return None
    path = text.split(":", 1)[0]
    return path if _is_ours(path, package) else None


def find_module(name: str) -> tuple[Path, bool] | None:
    """(source file, is_package) of an importable module ``name``, None when it is not a module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin), spec.submodule_search_locations is not None


def resolve_module(ref: str) -> str | None:
    """The longest prefix of dotted ``ref`` that is a module (``a.b.Cls`` -> ``a.b``)."""
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if find_module(name) is not None:
            return name
    return None


def _fstring_head(node: ast.JoinedStr) -> str | None:
    if node.values and isinstance(node.values[0], ast.Constant) and isinstance(node.values[0].value, str):
        return node.values[0].value
    return None


def python_references(source: str, module: str = "", is_package: bool = False, package: str = PACKAGE) -> tuple[set[str], set[str]]:
    """(``package`` references, third-party top-level imports) of one Python source.

    ``package`` references are dotted names (``ctbundles.a.b``, ``ctbundles.a.b.name`` from
    ``from ctbundles.a.b import name``: the caller resolves them to modules); relative imports are
    made absolute against ``module``. Third-party names are the top-level names of absolute imports
    outside ``package`` (the standard library is removed by the caller).
    """
    tree = ast.parse(source)
    ours: set[str] = set()
    others: set[str] = set()
    pkg_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if _is_ours(alias.name, package) else others).add(alias.name if _is_ours(alias.name, package) else _top(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if _is_ours(mod, package):
                ours.add(mod)
                ours.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
            elif mod:
                others.add(_top(mod))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            path = _module_path_of(node.value, package)
            if path:
                ours.add(path)
        elif isinstance(node, ast.JoinedStr):
            head = _fstring_head(node)
            if head and _is_ours(head.rstrip("."), package) and _MODULE_PATH.match(head.rstrip(".")):
                ours.add(head.rstrip("."))  # dynamic sub-module: at least its package
    return ours, others


def vendor_closure(roots: Iterable[str], package: str = PACKAGE) -> tuple[dict[str, tuple[Path, bool]], set[str]]:
    """Modules of ``package`` reached from ``roots`` (transitively, with parent packages).

    Returns ({module name: (source file, is_package)}, third-party top-level import names).
    Raises CTInputError when a root names no module of ``package``.
    """
    found: dict[str, tuple[Path, bool]] = {}
    third: set[str] = set()
    queue = []
    for ref in roots:
        mod = resolve_module(ref)
        if mod is None or not _is_ours(mod, package):
            raise CTInputError(f"{ref}: no module of {package} found for this reference (is {package} installed?)")
        if ref != mod:
            attr = ref[len(mod) + 1 :].split(".", 1)[0]
            if not hasattr(importlib.import_module(mod), attr) and find_module(f"{mod}.{attr}") is None:
                raise CTInputError(f"{ref}: {mod} has no attribute or module {attr!r}")
        queue.append(mod)
    while queue:
        name = queue.pop()
        if name in found:
            continue
        located = find_module(name)
        if located is None:
            continue
        found[name] = located
        parts = name.split(".")
        queue.extend(".".join(parts[:n]) for n in range(1, len(parts)))
        ours, others = python_references(located[0].read_text(encoding="utf-8"), name, located[1], package)
        third |= others
        for ref in ours:
            mod = resolve_module(ref)
            if mod is not None and _is_ours(mod, package) and mod not in found:
                queue.append(mod)
    return found, third


# --------------------------------------------------------------------------- rewriting


def _line_offsets(source: str) -> list[int]:
    offsets, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line.encode("utf-8"))
        offsets.append(total)
    return offsets


def rewrite_python(source: str, package: str = PACKAGE, prefix: str = VENDOR_PACKAGE) -> str:
    """``source`` with every module reference to ``package`` moved under ``prefix``.

    Rewritten (positions from ``ast``): import statements (``import ctbundles.x``,
    ``from ctbundles.x import y``), the name ``ctbundles`` read in expressions, string constants
    that are exactly a module path of ``package`` and the constant head of f-strings naming one.
    Docstrings, comments and other strings are unchanged. The result is checked to parse.
    """
    tree = ast.parse(source)
    raw = source.encode("utf-8")
    offsets = _line_offsets(source)
    inserts: list[int] = []  # byte offsets where ``prefix.`` is inserted

    def at(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + col

    def module_position(start: int) -> int:
        m = re.match(rb"from[\s\\]+", raw[start:])
        if m is None:
            raise ValueError("unexpected from-import statement")
        return start + m.end()

    def string_body(start: int, end: int) -> int:
        text = raw[start:end]
        m = re.match(rb"[rRuUfFbB]*('''|\"\"\"|'|\")", text)
        return start + m.end() if m else -1

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_ours(alias.name, package):
                    inserts.append(at(alias.lineno, alias.col_offset))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _is_ours(node.module or "", package):
                inserts.append(module_position(at(node.lineno, node.col_offset)))
        elif isinstance(node, ast.Name) and node.id == package and isinstance(node.ctx, ast.Load):
            inserts.append(at(node.lineno, node.col_offset))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _module_path_of(node.value, package):
            start, end = at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)
            body = string_body(start, end)
            if body >= 0 and raw[body:end].startswith(node.value.encode("utf-8")):
                inserts.append(body)
        elif isinstance(node, ast.JoinedStr):
            head = _fstring_head(node)
            if head and head.startswith(package + "."):
                start, end = at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)
                body = string_body(start, end)
                if body >= 0 and raw[body:end].startswith(head.encode("utf-8")):
                    inserts.append(body)
    out = raw
    for pos in sorted(set(inserts), reverse=True):
        out = out[:pos] + (prefix + ".").encode("utf-8") + out[pos:]
    result = out.decode("utf-8")
    ast.parse(result)
    return result


def rewrite_config(obj: Any, package: str = PACKAGE, prefix: str = VENDOR_PACKAGE) -> Any:
    """A parsed config with every ``package`` module reference moved under ``prefix``."""
    if isinstance(obj, dict):
        return {k: rewrite_config(v, package, prefix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rewrite_config(v, package, prefix) for v in obj]
    if isinstance(obj, str):
        if obj.startswith("$"):
            return "$" + rewrite_expression(obj[1:], package, prefix)
        if _module_path_of(obj, package):
            return f"{prefix}.{obj}"
    return obj


def rewrite_expression(expr: str, package: str = PACKAGE, prefix: str = VENDOR_PACKAGE) -> str:
    """A config ``$`` expression (without the ``$``) with ``package`` moved under ``prefix``.

    ``import ctbundles`` becomes ``import scripts`` (MONAI binds the name of a bare import only,
    and ``scripts/__init__.py`` imports ``scripts.ctbundles``); ``import ctbundles.a`` and
    ``from ctbundles.a import b`` get the prefix; elsewhere the name ``ctbundles`` at the head of a
    dotted name (not after ``.``) and string tokens that are exactly a module path of ``package``
    are prefixed. Token positions come from ``tokenize`` and the edits are spliced into ``expr``,
    so its spacing and any prose inside strings are kept.
    """
    stripped = expr.strip()
    try:
        node = ast.parse(stripped).body[0] if stripped else None
    except SyntaxError:  # ``@id`` references make most config expressions invalid Python
        node = None
    if isinstance(node, ast.Import) and len(node.names) == 1 and node.names[0].name == package and node.names[0].asname is None:
        return expr.replace(f"import {package}", f"import {prefix}", 1)
    lines = expr.splitlines(keepends=True) or [""]
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    edits: list[tuple[int, str]] = []
    previous = None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError):
        return expr
    for tok in tokens:
        pos = starts[tok.start[0] - 1] + tok.start[1]
        if tok.type == tokenize.NAME and tok.string == package and not (previous is not None and previous.string == "."):
            edits.append((pos, f"{prefix}."))
        elif tok.type == tokenize.STRING:
            m = re.match(r"^([rRuU]?)('|\")(.*)\2$", tok.string, re.S)
            if m and _module_path_of(m.group(3), package):
                edits.append((pos + len(m.group(1)) + 1, f"{prefix}."))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            previous = tok
    for pos, text in sorted(edits, reverse=True):
        expr = expr[:pos] + text + expr[pos:]
    return expr


def config_references(obj: Any, package: str = PACKAGE) -> tuple[set[str], set[str]]:
    """(``package`` dotted references, other top-level module names) used by a parsed config."""
    ours: set[str] = set()
    others: set[str] = set()
    if isinstance(obj, dict):
        items = list(obj.values())
        target = obj.get("_target_")
        if isinstance(target, str) and "." in target and not target.startswith(("$", "@", "%")):
            (ours.add(target) if _is_ours(target, package) else others.add(_top(target)))
    elif isinstance(obj, list):
        items = obj
    else:
        items = []
        if isinstance(obj, str) and obj.startswith("$"):
            expr = obj[1:].strip()
            try:
                tree = ast.parse(re.sub(r"@[\w#:]+", "_ref_", expr))
            except SyntaxError:
                tree = None
            if tree is not None:
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        for a in node.names:
                            (ours.add(a.name) if _is_ours(a.name, package) else others.add(_top(a.name)))
                    elif isinstance(node, ast.ImportFrom) and node.module:
                        if _is_ours(node.module, package):
                            ours.add(node.module)
                            ours.update(f"{node.module}.{a.name}" for a in node.names)
                        else:
                            others.add(_top(node.module))
                    elif isinstance(node, ast.Attribute):
                        dotted = _dotted(node)
                        if dotted and _is_ours(dotted, package):
                            ours.add(dotted)
                    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _module_path_of(node.value, package):
                        ours.add(node.value.split(":", 1)[0])
        elif isinstance(obj, str) and _module_path_of(obj, package):
            ours.add(obj.split(":", 1)[0])
    for v in items:
        o, t = config_references(v, package)
        ours |= o
        others |= t
    return ours, others


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


# --------------------------------------------------------------------------- packages


def exact_version(version: str) -> str:
    """A pip version without its local label (``2.13.0+cpu`` -> ``2.13.0``)."""
    return version.split("+", 1)[0]


def pinned_distributions(modules: Iterable[str], package: str = PACKAGE) -> dict[str, str]:
    """{distribution: exact installed version} for third-party top-level module names.

    Standard-library modules, ``package`` and ``scripts`` are skipped, and so are names no installed
    distribution provides (an optional import that is absent here).
    """
    dists = importlib.metadata.packages_distributions()
    pins: dict[str, str] = {}
    for name in sorted(set(modules)):
        if name in sys.stdlib_module_names or name in (package, VENDOR_PACKAGE, "__future__"):
            continue
        for dist in dists.get(name, []):
            if dist.lower().replace("_", "-") == package:
                continue
            try:
                found = importlib.metadata.distribution(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            pins[found.metadata["Name"] or dist] = exact_version(found.version)
    return dict(sorted(pins.items(), key=lambda kv: kv[0].lower()))


# --------------------------------------------------------------------------- export


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CTInputError(f"{path}: missing") from err
    except json.JSONDecodeError as err:
        raise CTInputError(f"{path}: not valid JSON ({err})") from err


def _copy_tree(src: Path, dst: Path, skip_top: Iterable[str] = ()) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip_top or any(p in _SKIP_NAMES or p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def network_ids(config: dict) -> list[str]:
    """Network definition ids of a config: ``network_def`` and every ``<x>_network_def``."""
    ids = [k for k in config if k == "network_def" or k.endswith("_network_def")]
    return sorted(ids, key=lambda k: (k != "network_def", k))


def checkpoint_name(net_id: str, suffix: str = ".pt") -> str:
    """``network_def`` -> ``model.pt``; ``roi_network_def`` -> ``model_roi.pt``."""
    stem = net_id[: -len("network_def")].rstrip("_")
    return f"model{'_' + stem if stem else ''}{suffix}"


@dataclasses.dataclass
class ExportResult:
    zip_path: Path
    vendored: list[str]
    required_packages_version: dict[str, str]
    onnx: list[dict]
    problems: list["Problem"]


def stage_bundle(bundle: str | Path, stage: str | Path, package: str = PACKAGE) -> tuple[list[str], dict[str, str]]:
    """Write the self-contained copy of ``bundle`` into ``stage`` (a new folder).

    Returns (vendored module names, required_packages_version). Raises CTInputError for a bundle
    that cannot be exported (missing metadata, missing ``models/model.pt``).
    """
    bundle, stage = Path(bundle), Path(stage)
    meta = _load_json(bundle / "configs" / "metadata.json")
    if "version" not in meta:
        raise CTInputError(f"{bundle / 'configs' / 'metadata.json'}: no 'version'")
    if not (bundle / "models" / "model.pt").is_file():
        raise CTInputError(
            f"{bundle / 'models' / 'model.pt'}: missing; a Model Zoo bundle ships its weights as models/model.pt "
            "(train the bundle or add the weights before exporting)"
        )
    _copy_tree(bundle, stage, skip_top=("scripts", "tests"))
    roots: set[str] = set()
    third: set[str] = set()
    configs = {}
    for path in sorted((bundle / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        config = _load_json(path)
        configs[path.name] = config
        ours, others = config_references(config, package)
        roots |= ours
        third |= others
    own_scripts = sorted((bundle / "scripts").glob("*.py")) if (bundle / "scripts").is_dir() else []
    for path in own_scripts:
        ours, others = python_references(path.read_text(encoding="utf-8"), f"{VENDOR_PACKAGE}.{path.stem}", False, package)
        roots |= ours
        third |= others
    modules, code_third = vendor_closure(sorted(roots), package)
    third |= code_third
    scripts_dir = stage / VENDOR_PACKAGE
    scripts_dir.mkdir(exist_ok=True)
    for path in own_scripts:
        atomic_write_text(scripts_dir / path.name, rewrite_python(path.read_text(encoding="utf-8"), package))
    for name, (path, is_pkg) in sorted(modules.items()):
        rel = Path(*name.split("."))
        target = scripts_dir / (rel / "__init__.py" if is_pkg else rel.with_suffix(".py"))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, rewrite_python(path.read_text(encoding="utf-8"), package))
    init = scripts_dir / "__init__.py"
    body = init.read_text(encoding="utf-8") if init.exists() else (
        f'"""Custom code of this bundle. ``{package}/`` holds the {package} modules its configs use (vendored)."""\n'
    )
    line = f"from . import {package}  # noqa: F401  (configs read scripts.{package}.* after ``$import scripts``)\n"
    if modules and line not in body:
        body = body.rstrip("\n") + "\n\n" + line
    atomic_write_text(init, body)
    for name, config in configs.items():
        atomic_write_json(stage / "configs" / name, rewrite_config(config, package))
    pins = pinned_distributions(third, package)
    meta = dict(meta)
    meta["required_packages_version"] = pins
    atomic_write_json(stage / "configs" / "metadata.json", meta)
    return sorted(modules), pins


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def large_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES)


def write_large_files_yml(folder: Path, url_base: str | None = None) -> Path | None:
    """``large_files.yml`` listing every file above 25 MB (path, url, md5), None when there is none."""
    big = large_files(folder)
    if not big:
        return None
    lines = ["large_files:"]
    for path in big:
        rel = path.relative_to(folder).as_posix()
        url = f"{url_base.rstrip('/')}/{rel}" if url_base else ""
        lines += [f'  - path: "{rel}"', f'    url: "{url}"', f'    hash_val: "{_md5(path)}"', '    hash_type: "md5"']
    out = folder / "large_files.yml"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def _zip_folder(folder: Path, zip_path: Path, top: str) -> None:
    def write(tmp):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    rel = path.relative_to(folder).as_posix()
                    stored = path.suffix in (".pt", ".ts", ".onnx", ".npy", ".gz")
                    zf.write(path, f"{top}/{rel}", compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)

    atomic_write(zip_path, write)


def export_bundle(
    bundle: str | Path,
    out: str | Path,
    onnx: bool = False,
    check: bool = False,
    schema: str | Path | None = None,
    large_file_url: str | None = None,
    net_checks: bool = True,
    progress=None,
) -> ExportResult:
    """Write ``<out>/<bundle>_v<version>.zip``: the bundle, its vendored code and pinned packages.

    ``onnx``: also write ``models/model*.onnx`` for every network (parity checked, see
    ``onnx_export``). ``check``: run ``zoo_check`` on the staged folder before zipping and raise
    CTInputError listing every failed check.
    """
    bundle = Path(bundle).resolve()
    say = progress or (lambda msg: None)
    meta = _load_json(bundle / "configs" / "metadata.json")
    name = bundle.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"{name}_v{meta.get('version', '')}.zip"
    if out.resolve().is_relative_to(bundle):
        raise CTInputError(f"{out}: the output folder is inside the bundle {bundle}; choose another --out")
    onnx_results: list[dict] = []
    problems: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="ctbundles_export_") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        say(f"staging {name}: vendoring the {PACKAGE} modules its configs use")
        vendored, pins = stage_bundle(bundle, stage)
        say(f"vendored {len(vendored)} modules; required packages {pins}")
        if onnx:
            say("exporting every network to ONNX and comparing with eager PyTorch")
            onnx_results = onnx_export(stage)
            bad = [r for r in onnx_results if not r["ok"]]
            if bad:
                raise CTInputError(f"{bundle}: ONNX outputs differ from PyTorch: {bad}")
        write_large_files_yml(stage, large_file_url)
        if check:
            say("running the Model Zoo checks")
            problems = zoo_check(stage, schema=schema, net_checks=net_checks)
            if problems:
                raise CTInputError(f"{bundle}: Model Zoo checks failed:\n" + "\n".join(f"  {p}" for p in problems))
        say(f"writing {zip_path}")
        _zip_folder(stage, zip_path, name)
    return ExportResult(zip_path, vendored, pins, onnx_results, problems)


# --------------------------------------------------------------------------- checks


@dataclasses.dataclass(frozen=True)
class Problem:
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


def default_schema_path() -> Path | None:
    """The offline zoo schema: ``$CTBUNDLES_ZOO_SCHEMA``, else ``../shared/zoo/`` beside a checkout."""
    env = os.environ.get("CTBUNDLES_ZOO_SCHEMA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "zoo" / SCHEMA_FILE
        if candidate.is_file():
            return candidate
    return None


def _bundle_folder(path: Path, tmp: Path) -> Path:
    """A folder to check: ``path`` itself, or the extracted top folder of a zip."""
    if path.is_dir():
        return path
    if not zipfile.is_zipfile(path):
        raise CTInputError(f"{path}: neither a bundle folder nor a zip file")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp)
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    if len(tops) == 1 and (tops[0] / "configs").is_dir():
        return tops[0]
    if (tmp / "configs").is_dir():
        return tmp
    raise CTInputError(f"{path}: the zip holds no bundle folder (configs/ not found)")


def _run_monai(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, (proc.stdout + proc.stderr)[-2000:]


def _large_files_listed(folder: Path) -> dict[str, dict]:
    path = folder / "large_files.yml"
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(e.get("path", "")).lstrip("./"): e for e in data.get("large_files", []) if isinstance(e, dict)}


def zoo_check(path: str | Path, schema: str | Path | None = None, net_checks: bool = True, timeout: float = 600.0) -> list[Problem]:
    """Every failed Model Zoo check of a bundle folder or exported zip (empty list: all pass).

    Checks (``../shared/REFERENCES.md`` section 4): ``files`` (required files), ``changelog``
    (``version`` in ``changelog``), ``schema`` (metadata against the zoo schema; a missing schema
    file is itself a failure), ``versions`` (exact pip versions), ``self-contained`` (no config or
    script still names ``ctbundles``), ``large_files`` (every file above 25 MB listed with a
    matching md5), ``verify_net_in_out`` and ``ckpt_export`` (``python -m monai.bundle``, run from
    the bundle folder; skipped with ``net_checks=False``).
    """
    path = Path(path)
    problems: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="ctbundles_zoocheck_") as tmp:
        folder = _bundle_folder(path, Path(tmp))
        for rel in REQUIRED_FILES:
            if not (folder / rel).is_file():
                problems.append(Problem("files", f"missing required file {rel}"))
        meta_path = folder / "configs" / "metadata.json"
        meta = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                problems.append(Problem("schema", f"configs/metadata.json is not valid JSON: {err}"))
        if isinstance(meta, dict):
            for key in REQUIRED_METADATA:
                if key not in meta:
                    problems.append(Problem("schema", f"metadata lacks '{key}'"))
            version = meta.get("version")
            if not isinstance(meta.get("changelog"), dict) or version not in meta["changelog"]:
                problems.append(Problem("changelog", f"version {version!r} is not a key of 'changelog'"))
            schema_path = Path(schema) if schema else default_schema_path()
            if schema_path is None or not schema_path.is_file():
                problems.append(Problem("schema", f"zoo schema {SCHEMA_FILE} not found (pass --schema PATH or set CTBUNDLES_ZOO_SCHEMA)"))
            else:
                import jsonschema

                schema_doc = json.loads(schema_path.read_text(encoding="utf-8"))
                validator = jsonschema.validators.validator_for(schema_doc)(schema_doc)
                for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.path)):
                    where = "/".join(str(p) for p in err.path) or "(top)"
                    problems.append(Problem("schema", f"metadata {where}: {err.message}"))
            versions = {k: meta.get(k) for k in ("monai_version", "pytorch_version", "numpy_version")}
            versions.update({f"required_packages_version/{k}": v for k, v in (meta.get("required_packages_version") or {}).items()})
            for key, value in versions.items():
                if not isinstance(value, str) or not _EXACT_VERSION.match(value):
                    problems.append(Problem("versions", f"{key} = {value!r} is not an exact pip version"))
            if PACKAGE in (meta.get("required_packages_version") or {}):
                problems.append(Problem("self-contained", f"required_packages_version names {PACKAGE}, which is not on PyPI; vendor it (ctbundles export)"))
        for cfg in sorted((folder / "configs").glob("*.json")) if (folder / "configs").is_dir() else []:
            if cfg.name == "metadata.json":
                continue
            try:
                refs, _ = config_references(json.loads(cfg.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                problems.append(Problem("files", f"configs/{cfg.name} is not valid JSON: {err}"))
                continue
            if refs:
                problems.append(Problem("self-contained", f"configs/{cfg.name} names {sorted(refs)[:3]}: not importable without {PACKAGE}"))
        for py in sorted((folder / VENDOR_PACKAGE).rglob("*.py")) if (folder / VENDOR_PACKAGE).is_dir() else []:
            ours, _ = python_references(py.read_text(encoding="utf-8"))
            if ours:
                problems.append(Problem("self-contained", f"{py.relative_to(folder).as_posix()} imports {sorted(ours)[:3]}"))
        if any(p.name == "__pycache__" for p in folder.rglob("*")):
            problems.append(Problem("files", "__pycache__ folders must not be shipped"))
        listed = _large_files_listed(folder)
        for big in large_files(folder):
            rel = big.relative_to(folder).as_posix()
            entry = listed.get(rel)
            if entry is None:
                problems.append(Problem("large_files", f"{rel} is {big.stat().st_size / 1e6:.1f} MB (> 25 MB) but not listed in large_files.yml"))
            elif str(entry.get("hash_type", "md5")).lower() == "md5" and entry.get("hash_val") and entry["hash_val"] != _md5(big):
                problems.append(Problem("large_files", f"{rel}: md5 differs from large_files.yml"))
        if net_checks and not [p for p in problems if p.check == "files"]:
            code, log = _run_monai(
                ["verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"],
                folder, timeout,
            )
            if code != 0:
                problems.append(Problem("verify_net_in_out", f"python -m monai.bundle verify_net_in_out failed: {log[-600:]}"))
            ts = Path(tmp) / "model.ts"
            code, log = _run_monai(
                ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", "models/model.pt",
                 "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"],
                folder, timeout,
            )
            if code != 0 or not ts.is_file():
                problems.append(Problem("ckpt_export", f"python -m monai.bundle ckpt_export (TorchScript) failed: {log[-600:]}"))
    return problems


# --------------------------------------------------------------------------- ONNX


def onnx_export(folder: str | Path, shape: dict[str, list[int]] | None = None, seed: int = 0) -> list[dict]:
    """Export every network of ``folder``'s inference config to ``models/model*.onnx``.

    Each ``<x>network_def`` is built from ``configs/inference.json`` (in a subprocess run from the
    folder, so its own ``scripts`` package is used), loads its checkpoint (``checkpoint_name``), is
    exported in eval mode by ``torch.onnx.export`` (opset ``ONNX_OPSET``, dynamic batch axis) and
    run by onnxruntime on the same random input (shape: ``shape[net_id]`` = [C, *spatial], default
    from the metadata's ``inputs.image`` and the network's ``in_channels``). Returns one dict per
    network: net_id, onnx file, input shape, max_abs_diff, tolerance, ok.
    """
    folder = Path(folder).resolve()
    code = _ONNX_SCRIPT.format(opset=ONNX_OPSET, atol=ONNX_ATOL, seed=seed, shape=json.dumps(shape or {}))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ONNX_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise CTInputError(f"{folder}: ONNX export failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return json.loads(lines[-1][len("ONNX_RESULT "):])


_ONNX_SCRIPT = r'''
import json, re, sys
sys.path.insert(0, ".")
import numpy as np, torch
import onnxruntime as ort
from monai.bundle import ConfigParser
torch.set_num_threads(1)
parser = ConfigParser()
parser.read_config("configs/inference.json")
parser.read_meta("configs/metadata.json")
meta_in = parser.get("_meta_#network_data_format#inputs#image")
shapes = json.loads({shape!r})
def spatial(shape, n=2):
    out = []
    for s in shape:
        m = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(s)) if not isinstance(s, int) else None
        out.append(s if isinstance(s, int) else (int(m.group(1)) * n if m else 64))
    return out
ids = sorted([k for k in parser.config if k == "network_def" or k.endswith("_network_def")], key=lambda k: (k != "network_def", k))
results = []
for net_id in ids:
    stem = net_id[: -len("network_def")].rstrip("_")
    name = "model" + ("_" + stem if stem else "")
    net = parser.get_parsed_content(net_id, instantiate=True)
    ckpt = torch.load(f"models/{{name}}.pt", map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        ckpt = ckpt["model"]
    net.load_state_dict(ckpt)
    net = net.float().eval()
    if net_id in shapes:
        in_shape = list(shapes[net_id])
    else:
        channels = parser.config[net_id].get("in_channels", meta_in["num_channels"])
        channels = parser.get_parsed_content(net_id + "#in_channels") if isinstance(channels, str) else channels
        in_shape = [int(channels)] + spatial(meta_in["spatial_shape"])
    gen = torch.Generator().manual_seed({seed})
    x = torch.rand([1] + in_shape, generator=gen)
    with torch.no_grad():
        ref = net(x)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    path = f"models/{{name}}.onnx"
    torch.onnx.export(net, (x,), path, opset_version={opset}, input_names=["image"], output_names=["pred"],
                      dynamic_axes={{"image": {{0: "batch"}}, "pred": {{0: "batch"}}}}, dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {{"image": x.numpy()}})[0]
    diff = float(np.max(np.abs(out - ref.numpy())))
    scale = max(1.0, float(ref.abs().max()))
    results.append({{"net_id": net_id, "onnx": path, "input_shape": [1] + in_shape, "opset": {opset},
                     "max_abs_diff": diff, "max_abs_eager": float(ref.abs().max()),
                     "tolerance": {atol} * scale, "ok": diff <= {atol} * scale}})
print("ONNX_RESULT " + json.dumps(results))
'''
