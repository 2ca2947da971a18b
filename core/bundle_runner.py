"""Run a bundle's own ``configs/inference.json`` with MONAI's bundle runner, as a user would.

``python -m monai.bundle run`` is started in a subprocess from the bundle folder with the bundle's
inference config as shipped and overrides only for ``bundle_root``, ``dataset_dir`` and
``output_dir`` (REFERENCES.md section 4: the Model Zoo layout and its config ids). Before that,
:func:`required_weights` reads the checkpoint files the config loads (``CheckpointLoader`` handlers and
``<name>_weights`` values),
so a bundle without its trained weights is reported as such instead of being run with random ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ctbundles.errors import CTInputError

__all__ = ["find_bundles_root", "read_bundle_config", "checkpoint_targets", "required_weights", "missing_weights", "run_inference", "prediction_file", "written_segmentations"]


def find_bundles_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding the four bundles: ``explicit``, else the source checkout, else ``./bundles``."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        import ctbundles

        candidates.append(Path(ctbundles.__file__).resolve().parents[1] / "bundles")  # editable install / checkout
        candidates.append(Path.cwd() / "bundles")
    for c in candidates:
        if (c / "cac_chest_cardiac_ct_segmentation" / "configs" / "inference.json").is_file() or (
            explicit and c.is_dir()
        ):
            return c.resolve()
    raise CTInputError(
        f"no bundles folder found (looked in {', '.join(str(c) for c in candidates)}); "
        "run from the repository root or give --bundles DIR"
    )


def read_bundle_config(bundle: Path, config_files: Sequence[str] = ("configs/inference.json",),
                       overrides: Mapping[str, Any] | None = None):
    """A ``ConfigParser`` over ``config_files`` of ``bundle`` (merged in order), with its metadata,
    ``bundle_root`` set to the bundle folder and ``overrides`` applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [str(bundle / f) for f in config_files]
    for f in files:
        if not os.path.isfile(f):
            raise CTInputError(f"{f}: bundle config not found")
    parser.read_config(files)
    meta = bundle / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser.update({"bundle_root": str(bundle), **dict(overrides or {})})
    return parser


def checkpoint_targets(bundle: str | os.PathLike, config_files: Sequence[str] = ("configs/inference.json",),
                       overrides: Mapping[str, Any] | None = None, include_disabled: bool = False) -> list[tuple[Path, str]]:
    """``(checkpoint file, id of the network it fills)`` for every checkpoint the config loads.

    Two ways a bundle config loads weights: a ``CheckpointLoader`` handler (its ``load_path``, with
    each network of its ``load_dict``), and a top-level ``<stage>_weights`` path that the config
    loads where it builds ``<stage>_network`` from ``<stage>_network_def`` (the cascade's stages 1
    and 3, which MONAI Label's bundle tasks would otherwise leave untrained; ``None`` means the
    stage is switched off). A loader whose ``_disabled_`` evaluates true is left out unless
    ``include_disabled``, except one whose expression tests whether the file exists: a loader that
    quietly turns itself off without its weights would otherwise run the network untrained.
    Relative paths are resolved against the bundle folder.
    """
    bundle = Path(bundle).resolve()
    parser = read_bundle_config(bundle, config_files, overrides)

    def _absolute(path) -> Path:
        return Path(path) if Path(path).is_absolute() else bundle / path

    out: list[tuple[Path, str]] = []
    for i, handler in enumerate(parser.get("handlers", []) or []):
        if not isinstance(handler, dict) or "CheckpointLoader" not in str(handler.get("_target_", "")):
            continue
        disabled = handler.get("_disabled_", False)
        if isinstance(disabled, str):
            disabled = "exists" not in disabled and parser.get_parsed_content(f"handlers#{i}#_disabled_") is True
        if disabled and not include_disabled:
            continue
        path = _absolute(parser.get_parsed_content(f"handlers#{i}#load_path", instantiate=False))
        out += [(path, str(ref).lstrip("@")) for ref in handler.get("load_dict", {}).values()]
    for key in [k for k in parser.get() if isinstance(k, str) and k.endswith("_weights")]:
        value = parser.get_parsed_content(key, instantiate=False)
        if isinstance(value, (str, os.PathLike)):
            out.append((_absolute(value), key[: -len("_weights")] + "_network_def"))
    return out


def required_weights(bundle: str | os.PathLike) -> list[Path]:
    """Checkpoint files ``configs/inference.json`` of ``bundle`` loads (:func:`checkpoint_targets`),
    ``models/model.pt`` first, each once."""
    bundle = Path(bundle).resolve()
    config = bundle / "configs" / "inference.json"
    if not config.is_file():
        raise CTInputError(f"{config}: no inference config in bundle {bundle}")
    paths = [bundle / "models" / "model.pt"]
    for path, _ in checkpoint_targets(bundle):
        if path.resolve() not in [p.resolve() for p in paths]:
            paths.append(path)
    return paths


def missing_weights(bundle: str | os.PathLike) -> list[Path]:
    """The :func:`required_weights` files that do not exist."""
    return [p for p in required_weights(bundle) if not p.is_file()]


def run_inference(bundle, dataset_dir, output_dir, log_path, threads: int | None = None, extra: dict | None = None,
                  progress=None, progress_every: float = 20.0) -> dict:
    """Run ``python -m monai.bundle run`` with the bundle's ``configs/inference.json``.

    Only ``bundle_root``, ``dataset_dir`` and ``output_dir`` are overridden (plus ``extra``, meant for
    tests). stdout and stderr go to ``log_path``. Returns ``{"returncode", "seconds", "command",
    "log"}``; ``threads`` sets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of the subprocess.
    While the bundle runs, ``progress(seconds, n_written)`` (when given) is called every
    ``progress_every`` seconds with the elapsed time and the number of segmentations written so far.
    """
    bundle = Path(bundle).resolve()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle),
        "--dataset_dir", str(Path(dataset_dir).resolve()),
        "--output_dir", str(output_dir),
    ]
    if (bundle / "configs" / "logging.conf").is_file():
        command += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in (extra or {}).items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    t0 = time.perf_counter()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=str(bundle), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    proc.wait(timeout=progress_every if progress is not None else None)
                    break
                except subprocess.TimeoutExpired:
                    progress(time.perf_counter() - t0, len(written_segmentations(output_dir)))
        except BaseException:  # interrupted (Ctrl-C) or a failing callback: do not leave the bundle running
            proc.kill()
            proc.wait()
            raise
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "command": command, "log": str(log_path)}


#: file extensions of the segmentations ``SaveImaged`` writes (``<image name>_seg<ext>``)
SEGMENTATION_EXTENSIONS = (".nii.gz", ".nii", ".mhd", ".nrrd")


def written_segmentations(output_dir: str | os.PathLike) -> list[Path]:
    """The segmentations ``SaveImaged`` (postfix ``seg``) has finished writing in ``output_dir``."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and any(p.name.endswith(f"_seg{ext}") for ext in SEGMENTATION_EXTENSIONS))


def prediction_file(image_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path | None:
    """The segmentation ``SaveImaged`` (postfix ``seg``, no separate folder) wrote for ``image_path``."""
    name = Path(image_path).name
    for ext in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    for ext in SEGMENTATION_EXTENSIONS:
        candidate = Path(output_dir) / f"{name}_seg{ext}"
        if candidate.is_file():
            return candidate
    return None
