"""Batch inference of a bundle over a folder of scans (an epidemiological cohort, thousands of cases).

The bundle's own ``configs/inference.json`` is parsed once with MONAI's :class:`~monai.bundle.ConfigParser`;
its network, inferer, post-processing and report handlers are instantiated once, its
``CheckpointLoader`` handlers load the weights once, and its ``SupervisedEvaluator`` then runs one
case at a time, so that:

- a failing case (unreadable file, refused protocol, a crash in the network) is recorded in
  ``failures.csv`` (file, error type, message) and the run goes on;
- every finished case's outputs are written into a staging folder and moved into
  ``cases/<case>/`` with one ``os.replace``, then recorded by one appended line of the rank's
  manifest part (``manifest/rank<r>.jsonl``); a case is finished only when both happened, so a
  crash in the middle of a case makes a resumed run (``--resume``) redo that case and only it;
- ``torchrun --nproc_per_node N`` splits the cases: rank ``r`` of ``world`` takes cases
  ``r, r + world, ...`` of the sorted list, writes its own manifest and failure parts, and rank 0
  merges every part into ``cohort.csv`` and ``failures.csv`` after a barrier (or ``--merge`` later).

Each case prints a progress line (done/total, case seconds, elapsed, ETA).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ctbundles.atomic_io import atomic_write_json
from ctbundles.bundle_runner import checkpoint_targets, read_bundle_config
from ctbundles.transforms.score_report import write_csv_rows
from ctbundles.errors import CTInputError

__all__ = [
    "BundleRunner",
    "BatchResult",
    "bundle_with_random_weights",
    "list_cases",
    "merge_parts",
    "run_batch",
    "save_random_weights",
]

MANIFEST_DIR = "manifest"
CASES_DIR = "cases"
STAGING_DIR = ".staging"


def save_random_weights(bundle: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                        config_files: Sequence[str] = ("configs/inference.json",), seed: int = 0) -> list[Path]:
    """Save a randomly initialised state dict, built from the config's own network definitions
    (with ``overrides``), at every checkpoint the config loads (``checkpoint_targets``, disabled
    loaders included); returns the files written."""
    import torch

    bundle = Path(bundle).resolve()
    overrides = {**dict(overrides or {}), "device": "$torch.device('cpu')"}
    parser = read_bundle_config(bundle, config_files, overrides)
    torch.manual_seed(seed)
    written = []
    for path, ref in checkpoint_targets(bundle, config_files, overrides, include_disabled=True):
        net = parser.get_parsed_content(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
        written.append(path)
    return written


def bundle_with_random_weights(bundle: str | os.PathLike, dest: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                               config_files: Sequence[str] = ("configs/inference.json",), seed: int = 0) -> Path:
    """Copy a bundle to ``dest`` (its ``*.pt`` files left out) and save random weights for every
    checkpoint its inference config loads (:func:`save_random_weights`). For timing and pipeline
    tests only: random weights segment nothing meaningful, but they cost exactly what trained
    weights cost."""
    src, dest = Path(bundle).resolve(), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "__pycache__"))
    save_random_weights(dest, overrides, config_files, seed)
    return dest


def list_cases(source: str | os.PathLike, runner: "BundleRunner | None" = None) -> list[str]:
    """The cases of ``source``: a datalist JSON (decathlon style: ``testing`` (or ``test``), else ``training`` items,
    ``image`` relative to ``base_dir`` or the file's folder) or a folder, listed by the bundle's own
    ``datalist`` expression with ``dataset_dir`` set to it (so each bundle reads the files it knows)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".json":
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError) as err:
            raise CTInputError(f"{source}: not a readable datalist JSON ({err})") from err
        if isinstance(data, dict):  # "test" is what the project's folder layouts write, "testing" the decathlon key
            items = data.get("testing") or data.get("test") or data.get("training") or data.get("validation") or []
        else:
            items = data
        if not items:
            raise CTInputError(f"{source}: no cases under 'testing', 'test', 'training' or 'validation'")
        base = Path(data.get("base_dir", source.parent)) if isinstance(data, dict) else source.parent
        if not base.is_absolute():
            base = source.parent / base
        out = []
        for item in items:
            image = item.get("image") if isinstance(item, Mapping) else item
            if image is None:
                raise CTInputError(f"{source}: an item has no 'image' entry: {item}")
            if isinstance(image, (list, tuple)):
                raise CTInputError(f"{source}: list-valued 'image' entries are not supported by batch inference; stack the inputs first")
            p = Path(image)
            out.append(str(p if p.is_absolute() else base / p))
        return out
    if not source.is_dir():
        raise CTInputError(f"{source}: neither a folder nor a datalist .json file")
    if runner is None:
        raise ValueError("listing a folder needs the bundle runner (its datalist expression)")
    return [str(p) for p in runner.datalist(source)]


def case_keys(paths: Sequence[str]) -> list[str]:
    """A unique, stable output name per input: the case id of the file name, with a short hash of
    the full path added when two inputs share a name (DICOM folders of different patients)."""
    from ctbundles.transforms.score_report import case_id

    names = [case_id(p) for p in paths]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [n if counts[n] == 1 else f"{n}-{hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]}" for n, p in zip(names, paths)]


class BundleRunner:
    """A bundle's inference config, instantiated once, run case by case.

    Args:
        bundle: bundle folder (holds ``configs/`` and ``models/``).
        output_dir: the folder the config's writers (``SaveImaged``, report handlers) write into;
            :func:`run_batch` passes a staging folder and moves its content after each case.
        overrides: config overrides (``{"device": ..., "slab_batch_size": 1}``), as on the
            ``monai.bundle run`` command line.
        config_files: config files relative to the bundle (overlays merged in order).
        image_key: the dataset item key of the input (``image`` in the four bundles).
    """

    def __init__(self, bundle: str | os.PathLike, output_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                 config_files: Sequence[str] = ("configs/inference.json",), image_key: str = "image") -> None:
        from ignite.engine import Events
        from monai.handlers import CheckpointLoader

        self.bundle = Path(bundle).resolve()
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.image_key = image_key
        self.parser = read_bundle_config(self.bundle, config_files, {"output_dir": str(self.output_dir), **dict(overrides or {})})
        # the runner feeds the evaluator one case at a time (run_case), so the config's own datalist, which
        # lists (and checks) dataset_dir, is only evaluated by datalist(folder)
        self._datalist = self.parser["datalist"]
        self.parser["datalist"] = []
        for i in range(len(self.parser.get("initialize", []) or [])):
            self.parser.get_parsed_content(f"initialize#{i}")
        self.evaluator = self.parser.get_parsed_content("evaluator")
        self.preprocessing = self.parser.get_parsed_content("preprocessing")
        self.device = self.parser.get_parsed_content("device")
        # weights once: run each CheckpointLoader now, then detach it from the evaluator's STARTED event
        self.checkpoints: list[str] = []
        for handler in self.parser.get_parsed_content("handlers"):
            if isinstance(handler, CheckpointLoader):
                handler(self.evaluator)
                if self.evaluator.has_event_handler(handler, Events.STARTED):
                    self.evaluator.remove_event_handler(handler, Events.STARTED)
                self.checkpoints.append(str(handler.load_path))

    def datalist(self, folder: str | os.PathLike) -> list[str]:
        """The bundle's own ``datalist`` expression evaluated on ``folder``."""
        from monai.bundle import ConfigParser

        p = ConfigParser(self.parser.get())
        p.update({"dataset_dir": str(Path(folder).resolve()), "datalist": self._datalist})
        try:
            return list(p.get_parsed_content("datalist"))
        except RuntimeError as err:  # MONAI wraps the expression's error; the user needs ours (folder, problem)
            if isinstance(err.__cause__, CTInputError):
                raise err.__cause__ from None
            raise

    def networks(self) -> list[Any]:
        """Every ``torch.nn.Module`` the config instantiates at top level (for timing hooks)."""
        import torch

        out = []
        for key in self.parser.get():
            if key.endswith("network") or key == "network":
                try:
                    obj = self.parser.get_parsed_content(key)
                except Exception:  # noqa: BLE001 - a key that is not a component
                    continue
                if isinstance(obj, torch.nn.Module) and all(obj is not o for o in out):
                    out.append(obj)
        return out

    def run_case(self, path: str) -> None:
        """Run the evaluator on the one case ``path`` (read, preprocess, infer, post-process, report)."""
        from monai.data import DataLoader, Dataset

        loader = DataLoader(Dataset([{self.image_key: path}], transform=self.preprocessing), batch_size=1, num_workers=0)
        ev = self.evaluator
        ev.data_loader = loader
        ev.state.epoch_length = 1
        # an exception in an earlier case leaves ignite's run generator exhausted; start afresh
        if hasattr(ev, "_internal_run_generator"):
            ev._internal_run_generator = None
        ev.run()
        if ev.state.iteration != 1:
            raise RuntimeError(f"{path}: the evaluator ran {ev.state.iteration} iterations instead of 1")


@dataclass
class BatchResult:
    total: int
    assigned: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cohort_csv: str | None = None
    failures_csv: str | None = None


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def read_manifest(out: Path) -> dict[str, dict]:
    """Finished cases of every rank's manifest part: key -> record (a torn last line is ignored)."""
    done: dict[str, dict] = {}
    for part in sorted((out / MANIFEST_DIR).glob("rank*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "key" in rec and (out / CASES_DIR / rec["key"]).is_dir():
                done[rec["key"]] = rec
    return done


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _case_rows(folder: Path) -> list[dict]:
    """Cohort rows of one finished case: rows of the report CSV the bundle's handler wrote for the
    case's own JSON reports (the handler's CSV also holds earlier cases of the process)."""
    from ctbundles.transforms.score_report import read_csv_rows, report_row

    reports = {p.stem: p for p in folder.glob("*.json")}
    rows = []
    for csv_path in folder.glob("*.csv"):
        rows += [r for r in read_csv_rows(csv_path) if r.get("case") in reports]
        csv_path.unlink()
    if not rows:
        for name, p in reports.items():
            try:
                rows.append(report_row(json.loads(p.read_text()), name))
            except (ValueError, TypeError):
                continue
    return rows


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def run_batch(bundle: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
              overrides: Mapping[str, Any] | None = None, config_files: Sequence[str] = ("configs/inference.json",),
              rank: int | None = None, world: int | None = None, merge: bool | None = None,
              progress: Callable[[str], None] | None = None, after_case: Callable[[str, str], None] | None = None) -> BatchResult:
    """Run the bundle on every case of ``source`` (folder or datalist JSON), writing into ``out``.

    ``rank``/``world`` default to torchrun's ``RANK``/``WORLD_SIZE``. Without ``resume`` the output
    folder must not hold an earlier manifest. ``merge`` (default: rank 0 merges, after a barrier when
    ``world`` > 1) writes ``cohort.csv`` and ``failures.csv``. ``after_case(key, status)`` is called
    after each case is recorded (for tests and monitoring).
    """
    env_rank, env_world = _dist_env()
    rank = env_rank if rank is None else int(rank)
    world = env_world if world is None else int(world)
    if not 0 <= rank < world:
        raise CTInputError(f"rank {rank} outside world size {world}")
    out = Path(out).resolve()
    src = Path(source).resolve()
    if src.is_dir() and (out == src or out.is_relative_to(src)):
        raise CTInputError(f"{out}: --out is the input folder {src} or inside it; its cases/ and manifest/ folders would be "
                           "listed as scans: choose an output folder outside it")
    progress = progress or (lambda line: print(line, flush=True))
    if not resume and (out / MANIFEST_DIR).is_dir() and any((out / MANIFEST_DIR).glob("rank*.jsonl")):
        raise CTInputError(f"{out} already holds a batch manifest; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING_DIR / f"rank{rank}"
    if staging.exists():  # what a crashed case left behind
        shutil.rmtree(staging)
    overrides = dict(overrides or {})
    if "device" not in overrides and "LOCAL_RANK" in os.environ:
        overrides["device"] = f"$torch.device('cuda:{int(os.environ['LOCAL_RANK'])}' if torch.cuda.is_available() else 'cpu')"
    runner = BundleRunner(bundle, staging, overrides, config_files)
    paths = list_cases(source, runner)
    keys = case_keys(paths)
    mine = [(k, p) for i, (k, p) in enumerate(zip(keys, paths)) if i % world == rank]
    finished = read_manifest(out) if resume else {}
    todo = [(k, p) for k, p in mine if k not in finished]
    result = BatchResult(total=len(paths), assigned=len(mine), skipped=[k for k, _ in mine if k in finished])
    manifest_part = out / MANIFEST_DIR / f"rank{rank}.jsonl"
    failure_part = out / MANIFEST_DIR / f"failures.rank{rank}.jsonl"
    progress(f"rank {rank}/{world}: {len(mine)} of {len(paths)} cases, {len(result.skipped)} already finished, {len(todo)} to run")
    t_start = time.perf_counter()
    for n, (key, path) in enumerate(todo, 1):
        t0 = time.perf_counter()
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            runner.run_case(path)
            rows = _case_rows(staging)
            final = out / CASES_DIR / key
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # moved by a run that crashed before recording it
                shutil.rmtree(final)
            os.replace(staging, final)
            outputs = sorted(str(p.relative_to(out)) for p in final.rglob("*") if p.is_file())
            _append_line(manifest_part, {"key": key, "input": path, "rank": rank, "seconds": round(time.perf_counter() - t0, 3),
                                         "outputs": outputs, "rows": rows, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            status = "done"
            result.done.append(key)
        except Exception as err:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
            cause = err
            while cause.__cause__ is not None and not isinstance(cause, CTInputError):
                cause = cause.__cause__
            message = str(cause) or str(err)
            if path not in message:
                message = f"{path}: {message}"
            _append_line(failure_part, {"key": key, "file": path, "error_type": type(cause).__name__, "message": " ".join(message.split()),
                                        "rank": rank, "traceback": traceback.format_exc(limit=-3)})
            status = f"FAILED ({type(cause).__name__})"
            result.failed.append(key)
        elapsed = time.perf_counter() - t_start
        eta = elapsed / n * (len(todo) - n)
        progress(f"[rank {rank}] {len(result.skipped) + n}/{len(mine)} {key} {status} in {time.perf_counter() - t0:.1f} s | "
                 f"elapsed {_fmt_s(elapsed)} | ETA {_fmt_s(eta)}")
        if after_case is not None:
            after_case(key, status)
    if staging.exists():
        shutil.rmtree(staging)
    merge = (rank == 0) if merge is None else merge
    if world > 1:
        _barrier()
    if merge:
        result.cohort_csv, result.failures_csv = (str(p) for p in merge_parts(out, expected=keys))
        progress(f"merged: {result.cohort_csv}, {result.failures_csv}")
    return result


def _barrier() -> None:
    """Wait for every rank (gloo process group over torchrun's rendezvous; no tensors move)."""
    import datetime

    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(days=30))
        created = True
    dist.barrier()
    if created:
        dist.destroy_process_group()


def merge_parts(out: str | os.PathLike, expected: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Merge every rank's parts into ``cohort.csv`` (one row per report of each finished case, with
    its input and rank) and ``failures.csv`` (file, error type, message of each case that failed
    and did not finish later), plus ``summary.json`` (counts, and the expected cases neither
    finished nor failed, when ``expected`` is given)."""
    out = Path(out)
    done = read_manifest(out)
    failures: dict[str, dict] = {}
    for part in sorted((out / MANIFEST_DIR).glob("failures.rank*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("key") not in done:
                failures[rec["key"]] = rec
    rows = []
    for key in sorted(done):
        rec = done[key]
        for row in rec.get("rows") or [{}]:
            rows.append({"key": key, "input": rec["input"], "rank": rec["rank"], "seconds": rec["seconds"], **row})
    cohort = write_csv_rows(out / "cohort.csv", rows, columns=("key", "input", "rank", "seconds"))
    fail_rows = [{"file": r["file"], "error_type": r["error_type"], "message": r["message"], "key": k, "rank": r["rank"]} for k, r in sorted(failures.items())]
    failed_csv = write_csv_rows(out / "failures.csv", fail_rows, columns=("file", "error_type", "message", "key", "rank"))
    summary = {"finished": len(done), "failed": len(failures)}
    if expected is not None:
        summary["total"] = len(expected)
        summary["missing"] = [k for k in expected if k not in done and k not in failures]
    atomic_write_json(out / "summary.json", summary)
    return cohort, failed_csv


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses, else a string (``$``-expressions included)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CTInputError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `ctbundles batch`")
