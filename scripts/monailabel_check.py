#!/usr/bin/env python
"""Serve each bundle from a MONAI Label ``monaibundle``-style app and check it through the REST API.

Not part of the test run. For every bundle folder given (default: the repository's bundles that
ship ``models/model.pt``) it

1. creates (once) a virtual environment ``--venv`` with ``--system-site-packages`` (so the
   installed CPU torch is reused; a constraints file pins torch, numpy, monai and the other shared
   packages to the versions installed, so pip never pulls another torch), and installs MONAI Label
   from PyPI and this project into it. MONAI Label dependencies with no build for this environment
   are replaced by stand-ins that raise when called: ``torchvision`` (PyPI's wheels need the CUDA
   torch; MONAI Label imports it at module level for 2D image grids), ``pydicom-seg`` (needs
   pydicom < 3; used only for DICOM SEG) and ``sam2`` (not installed; the SAM2 apps only);
2. per bundle, writes an app folder ``<work>/<bundle>/app`` whose ``main.py`` serves the bundle
   copied under ``app/model/<bundle>`` with MONAI Label's own ``BundleInferTask`` /
   ``BundleTrainTask`` (the ``monaibundle`` sample app's design), and its own studies folder with
   two generated cases (image and final label, the local datastore's layout): one datastore per
   task, as MONAI Label is deployed, since a trainer trains on every labelled study it holds;
3. starts ``monailabel start_server`` on 127.0.0.1 with a free port, requests inference on one
   case (``POST /infer/<bundle>?image=<id>&output=image``), computes the Dice of the returned label
   against the generated ground truth, runs one training epoch (``POST /train/<bundle>`` with
   ``max_epochs`` 1) and polls ``GET /train/`` until it finishes;
4. always stops the server (its whole process group) and prints one outcome line per bundle.

Usage (from the repository root)::

    python scripts/monailabel_check.py --work /tmp/monailabel_check [--bundles B1 B2 ...] [--small]

The generated cases are those of the main job (``ctbundles demo``): each bundle's scans on the grid
its shipped weights were trained on (``ctbundles.commands.demo.KINDS``); ``--small`` uses the coarse
presets of ``ctbundles synth`` instead (the orCaScore cascade's ``train.json`` pads the small cardiac
preset's 128 x 128 slices to its 256 x 256 training patch).

Exit status 0 when every bundle served, inferred and trained.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MONAILABEL_VERSION = "0.8.5"
PINNED = ["torch", "numpy", "monai", "jsonschema", "scipy", "pydicom", "nibabel", "SimpleITK", "pytorch-ignite",
          "scikit-image", "pillow"]
# MONAI Label 0.8.5's requirements, less monai (installed), sam2 (SAM2 apps only, builds from source),
# numpymaxflow (scribbles only) and pydicom-seg (pydicom < 3; stand-in below)
MONAILABEL_DEPS = [
    "uvicorn>=0.29.0", "pydantic>=2.7.0", "pydantic-settings>=2.2.1", "python-dotenv>=1.0.1", "fastapi>=0.110.2",
    "python-multipart>=0.0.9", "httpx>=0.27.0", "schedule>=1.2.1", "dicomweb-client>=0.59.1", "timeloop>=1.0.2",
    "expiringdict>=1.2.2", "expiring_dict>=1.1.0", "cachetools>=5.3.3", "watchdog>=4.0.0", "pynetdicom>=2.0.2",
    "pynrrd>=1.0.0", "girder-client>=3.2.3", "ninja>=1.11.1.1", "einops>=0.7.0", "pyyaml>=6.0.1", "filelock>=3.11.0",
    "passlib>=1.7.4", "pyjwt>=2.8.0", "bcrypt>=4.1.2", "shapely>=2.0.4", "requests-toolbelt>=1.0.0",
    "scikit-learn", "google-auth>=2.29.0", "psutil", "itk",
]
#: bundle -> synthetic kind and layout of its cases
KIND_OF = {
    "icac_ct_segmentation": "head",
    "cac_chest_cardiac_ct_segmentation": "chest",
    "cac_orcascore_cascade_ct_segmentation": "cardiac",
    "isles2018_ctp_stroke_segmentation": "ctp",
}

STUBS = {
    "torchvision/__init__.py": '"""Stand-in: PyPI has no torchvision for this CPU torch; MONAI Label imports it at module level."""\n'
                               '__version__ = "0.0.0+stand-in"\n',
    "torchvision/utils.py": "def make_grid(*a, **k):\n    raise NotImplementedError('torchvision stand-in')\n\n\n"
                            "def save_image(*a, **k):\n    raise NotImplementedError('torchvision stand-in')\n",
    "pydicom_seg/__init__.py": '"""Stand-in: pydicom-seg needs pydicom < 3; MONAI Label uses it for DICOM SEG only."""\n\n\n'
                               "class _Unavailable:\n    def __init__(self, *a, **k):\n"
                               "        raise NotImplementedError('pydicom-seg stand-in: no DICOM SEG')\n\n\n"
                               "MultiClassReader = SegmentReader = MultiClassWriter = _Unavailable\ntemplate = None\n",
    "pydicom_seg/reader.py": "from pydicom_seg import MultiClassReader, SegmentReader  # noqa: F401\n",
}

MAIN_PY = '''"""MONAI Label app serving every bundle under model/ (the monaibundle sample app's design)."""

import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class CTBundlesApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        root = os.path.join(app_dir, "model")
        self.bundles = {name: os.path.join(root, name) for name in sorted(os.listdir(root))}
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="ctbundles",
                         description="ctbundles MONAI bundles", version="1")

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            task = BundleInferTask(path, self.conf)
            if task.is_valid():
                infers[name] = task
            else:
                logger.warning("bundle %s is not a valid MONAI Label inference bundle", name)
        return infers

    def init_trainers(self):
        trainers = {}
        for name, path in self.bundles.items():
            task = BundleTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers
'''


def log(msg: str) -> None:
    print(f"[monailabel_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup_venv(venv: Path) -> Path:
    """The venv's python, with MONAI Label and this project installed (idempotent)."""
    python = venv / "bin" / "python"
    marker = venv / ".ctbundles_monailabel_ready"
    if marker.is_file():
        return python
    sh([sys.executable, "-m", "venv", "--system-site-packages", venv])
    from importlib import metadata

    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pass
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    pip = [python, "-m", "pip", "install", "-q", "-c", constraints]
    sh(pip + ["--no-deps", f"monailabel=={MONAILABEL_VERSION}"])
    sh(pip + MONAILABEL_DEPS)
    sh(pip + ["--no-deps", "-e", REPO])
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for rel, text in STUBS.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    # this project's editable finder first, so a ctbundles installed in the base python does not shadow it
    (site / "zz_ctbundles_editable_first.pth").write_text(
        "import sys; [sys.meta_path.insert(0, sys.meta_path.pop(i)) for i, f in list(enumerate(sys.meta_path)) "
        "if 'Editable' in getattr(f, '__name__', '')]\n"
    )
    sh([python, "-c", "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, monailabel.main, ctbundles"])
    marker.write_text("ok\n")
    return python


def write_cases(bundle: str, studies: Path, work: Path, n: int = 2, small: bool = False) -> list[dict]:
    """Generate ``n`` cases of the bundle's kind into the local datastore (image + labels/final)."""
    import nibabel as nib
    import numpy as np

    from ctbundles.commands import demo

    kind = KIND_OF[bundle]
    cohort = demo.make_cohort(kind, work / "cohorts" / bundle, n, seed=0, small=small)
    final = studies / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in cohort["cases"][:n]:
        name = f"{bundle}__{case['case']}.nii.gz"
        if case["image"].endswith(".mhd"):  # the local datastore lists NIfTI; same grid, same values
            import SimpleITK as sitk

            sitk.WriteImage(sitk.ReadImage(case["image"]), str(studies / name))
            sitk.WriteImage(sitk.ReadImage(case["label"]), str(final / name))
        else:
            shutil.copy(case["image"], studies / name)
            lab = nib.load(case["label"])
            nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8), lab.affine), str(final / name))
        cases.append({"id": name[: -len(".nii.gz")], "image": str(studies / name), "label": str(final / name), "kind": kind})
    return cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def dice_of(returned: Path, case: dict) -> float:
    from ctbundles.commands import demo

    kind = case["kind"]
    a = demo.load_mask(kind, case["image"], str(returned))
    b = demo.load_mask(kind, case["image"], case["label"])
    return demo.dice(a, b)


def check_bundle(base: str, bundle: str, case: dict, work: Path, train_timeout: float) -> dict:
    out = {"bundle": bundle}
    t0 = time.perf_counter()
    query = urllib.parse.urlencode({"image": case["id"], "output": "image"})
    body = urllib.parse.urlencode({"params": json.dumps({"device": "cpu"})}).encode()
    try:
        status, content = http("POST", f"{base}/infer/{bundle}?{query}", body, {"Content-Type": "application/x-www-form-urlencoded"})
        returned = work / "returned" / f"{case['id']}_label.nii.gz"
        returned.parent.mkdir(parents=True, exist_ok=True)
        returned.write_bytes(content)
        out["infer_seconds"] = time.perf_counter() - t0
        out["dice"] = dice_of(returned, case)
        out["infer"] = "ok"
    except Exception as err:  # noqa: BLE001 - reported per bundle
        out["infer"] = f"failed: {_http_detail(err)}"
    t0 = time.perf_counter()
    try:
        params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
        http("POST", f"{base}/train/{bundle}", json.dumps(params).encode(), {"Content-Type": "application/json"})
        deadline = time.time() + train_timeout
        state = None
        while time.time() < deadline:
            time.sleep(5)
            _, content = http("GET", f"{base}/train/")
            state = json.loads(content or b"{}")
            if state.get("status") in ("DONE", "ERROR", "STOPPED"):
                break
        out["train_seconds"] = time.perf_counter() - t0
        result = (state or {}).get("status", "unknown")
        out["train"] = "ok" if result == "DONE" else f"failed: status {result}"
        if result != "DONE":
            details = (state or {}).get("details") or []
            out["train_detail"] = " | ".join(str(d) for d in details[-8:])
    except Exception as err:  # noqa: BLE001
        out["train"] = f"failed: {_http_detail(err)}"
    return out


def _http_detail(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        try:
            return f"HTTP {err.code}: {err.read().decode(errors='replace')[-1500:]}"
        except Exception:  # noqa: BLE001
            return f"HTTP {err.code}"
    return f"{type(err).__name__}: {err}"


def serve_and_check(bundle: Path, work: Path, python: str, a) -> dict:
    """Serve ``bundle`` alone from a fresh app and datastore, check inference and one training epoch, stop."""
    app, studies = work / "app", work / "studies"
    for d in (app, studies, work / "returned"):
        shutil.rmtree(d, ignore_errors=True)
    (app / "model").mkdir(parents=True)
    (app / "main.py").write_text(MAIN_PY)
    shutil.copytree(bundle, app / "model" / bundle.name, ignore=shutil.ignore_patterns("eval", "__pycache__"))
    cases = write_cases(bundle.name, studies, work, small=a.small)
    log(f"{bundle.name}: {len(cases)} generated case(s) in {studies}")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = work / "server.log"
    monailabel = Path(python).parent / "monailabel"
    cmd = [str(monailabel), "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1",
           "--port", str(port), "--conf", "models", "all"]
    log("starting " + " ".join(cmd) + f" (log: {server_log})")
    # the monailabel launcher runs the "python" it finds on PATH: the venv's
    env = dict(os.environ, MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", VIRTUAL_ENV=str(Path(python).parent.parent),
               PATH=f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with open(server_log, "w") as logf:
        server = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(work), env=env, start_new_session=True)
        try:
            deadline = time.time() + a.start_timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited with {server.returncode}; see {server_log}")
                try:
                    _, info = http("GET", f"{base}/info/", timeout=10)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.time() > deadline:
                        raise RuntimeError(f"the server did not answer within {a.start_timeout:.0f} s; see {server_log}")
                    time.sleep(3)
            info = json.loads(info)
            log(f"server up on {base}: models {sorted(info.get('models', {}))}, trainers {sorted(info.get('trainers', {}))}")
            if bundle.name not in info.get("models", {}):
                return {"bundle": bundle.name, "infer": f"failed: not loaded as a MONAI Label model (see {server_log})",
                        "train": "not run"}
            log(f"{bundle.name}: inference on {cases[0]['id']}, then one training epoch")
            return check_bundle(base, bundle.name, cases[0], work, a.train_timeout)
        finally:
            try:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log(f"server stopped (process group {server.pid})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/ctbundles_monailabel_check", help="work folder (app, studies, logs)")
    p.add_argument("--venv", default=None, help="virtual environment (default <work>/venv; reused when ready)")
    p.add_argument("--bundles", nargs="*", default=None, help="bundle folders or names under bundles/ (default: bundles/* with models/model.pt)")
    p.add_argument("--train-timeout", type=float, default=1800, help="seconds to wait for the one training epoch")
    p.add_argument("--small", action="store_true", help="the coarse small presets instead of the main job's grids (faster; not representative)")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for the server to answer")
    a = p.parse_args(argv)
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.bundles:
        # a bundle folder, or the name of one of the repository's bundles
        bundles = [Path(b).resolve() if Path(b).is_dir() else (REPO / "bundles" / b).resolve() for b in a.bundles]
        missing = [str(b) for b in bundles if not (b / "configs" / "inference.json").is_file()]
        if missing:
            p.error(f"not a bundle folder (no configs/inference.json): {', '.join(missing)}")
    else:
        bundles = [b for b in sorted((REPO / "bundles").iterdir()) if (b / "models" / "model.pt").is_file()]
        skipped = [b.name for b in sorted((REPO / "bundles").iterdir()) if b not in bundles]
        for name in skipped:
            print(f"OUTCOME {name}: not served (no models/model.pt)")
    if not bundles:
        print("no bundle to serve")
        return 1
    python = setup_venv(Path(a.venv).resolve() if a.venv else work / "venv")

    # One app and one datastore per bundle, as MONAI Label is deployed per task: a trainer trains on
    # every labelled study of its datastore, so four unrelated bundles cannot share one.
    results = [serve_and_check(b, work / b.name, python, a) for b in bundles]
    ok = True
    for r in results:
        dice = f", Dice {r['dice']:.3f}" if "dice" in r else ""
        times = "".join(f", {k.split('_')[0]} {r[k]:.0f} s" for k in ("infer_seconds", "train_seconds") if k in r)
        print(f"OUTCOME {r['bundle']}: infer {r['infer']}{dice}; train (1 epoch) {r['train']}{times}")
        if r.get("train_detail"):
            print(f"        train detail: {r['train_detail']}")
        ok = ok and r["infer"] == "ok" and r["train"] == "ok"
    (work / "outcome.json").write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
