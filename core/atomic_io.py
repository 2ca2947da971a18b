"""Atomic file output: the one way the project writes files.

Every writer goes through :func:`atomic_write`: it writes into a temporary name in the destination
folder, then ``os.replace`` renames it onto the final name, so a reader never sees a half-written
file and a crash leaves no truncated output (at most a hidden ``.tmp-*`` file). Writers that are
given the inputs of a computation refuse to write over any of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "refuse_overwrite", "to_jsonable", "IMAGE_SUFFIXES", "split_suffix"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".nrrd")

PathLike = str | os.PathLike


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) for the image suffixes above (``case.nii.gz`` -> ``("case", ".nii.gz")``); suffix "" if none."""
    low = name.lower()
    for suf in IMAGE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)], name[-len(suf) :]
    return name, ""


def _companion_files(src: Path) -> list[Path]:
    """Files an input reads besides itself: a MetaImage header's ``ElementDataFile`` (e.g. the ``.raw``)."""
    if src.suffix.lower() != ".mhd" or not src.is_file():
        return []
    try:
        lines = src.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile" and value.strip() and value.strip() != "LOCAL":
            return [(src.parent / value.strip()).resolve()]
    return []


def refuse_overwrite(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> None:
    """Raise ``ValueError`` when ``path`` is one of ``inputs`` (an existing file read by the computation, or the
    data file of an input MetaImage header) or lies inside one that is a folder (a DICOM series: a report written there could replace a slice or join the series)."""
    target = Path(path).resolve()
    for src in inputs:
        if src is None or not Path(src).exists():
            continue
        src = Path(src).resolve()
        if src == target or target in _companion_files(src):
            raise ValueError(f"refusing to write {path} over an input file")
        if src.is_dir() and target.is_relative_to(src):
            raise ValueError(f"refusing to write {path} inside the input folder {src}; choose an output path outside it")


def atomic_write(path: PathLike, writer: Callable[[str], Any], suffix: str | None = None, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Call ``writer(tmp_path)`` with a temporary name in ``path``'s folder, then rename it onto ``path``.

    ``suffix`` (default: the file's image suffix or extension) ends the temporary name, so writers
    that pick the format from the extension (nibabel, SimpleITK, matplotlib, numpy) write the right
    format. The parent folder is created. ``inputs``: files the output must never replace.
    """
    path = Path(path)
    refuse_overwrite(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = split_suffix(path.name)[1] or path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write ``text`` (UTF-8, newlines as given) atomically."""

    def _write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, _write, suffix=Path(path).suffix or ".txt", inputs=inputs)


def to_jsonable(obj):
    """Numpy scalars/arrays, tuples, paths and dataclasses inside ``obj`` as plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return obj


def atomic_write_json(path: PathLike, data, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write ``data`` as indented JSON atomically (numpy values converted)."""
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=2) + "\n", inputs=inputs)
