"""Latency, speed-up and memory of the four bundles' inference on standard generated cases (issue 7).

Every measurement runs in a fresh Python process (``python -m ctbundles.benchmark --child``), so its
peak resident memory (:func:`peak_rss_mb`: Linux ``VmHWM``, which covers torch's native allocations
that ``tracemalloc`` misses) is that of one pipeline on one case. In the child the
bundle's ``configs/inference.json`` is instantiated once through MONAI's ``ConfigParser``
(:class:`ctbundles.batch_inference.BundleRunner`, weights loaded once); then each repeat times one
case end to end (read, preprocess, network, post-process, report and segmentation written), with

- ``read_preprocess_s``: the config's ``preprocessing`` (load + checks + intensity transforms);
- ``network_s``: the summed wall time inside the top-level forward passes of every network the
  config instantiates (forward hooks; CUDA synchronised);
- ``rest_s``: the remainder (inferer tiling, post-processing, scoring, writing).

Configurations: ``default`` (the bundle as shipped: batched slabs/windows), ``naive`` (one slice or
one window per forward pass, fp32, ``cudnn.benchmark`` off), and on CUDA ``amp`` (the evaluator's
``amp`` on). The chest CT bundle is also timed as the scan grows (60, 120, 240, 480 slices) to show
the cost is linear in the number of slices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ctbundles.atomic_io import atomic_write_json, atomic_write_text

__all__ = ["STANDARD_CASES", "NAIVE_OVERRIDES", "run_bench", "to_markdown", "measure", "speedup", "scaling_fit"]


def bundles_dir() -> Path:
    """The bundles folder: the source checkout's, else ``./bundles`` (``bundle_runner.find_bundles_root``)."""
    from ctbundles.bundle_runner import find_bundles_root

    return find_bundles_root()


#: bundle -> the standard generated case it is timed on (synthetic kind, shape X, Y, Z; issue 7)
STANDARD_CASES: dict[str, dict[str, Any]] = {
    "cac_chest_cardiac_ct_segmentation": {"kind": "chest", "shape": (512, 512, 240), "label": "chest CT 512x512x240"},
    "isles2018_ctp_stroke_segmentation": {"kind": "ctp", "shape": (256, 256, 16), "label": "ISLES CTP slab 256x256x16"},
    "cac_orcascore_cascade_ct_segmentation": {"kind": "cardiac", "shape": (512, 512, 60), "label": "cardiac CT 512x512x60"},
    "icac_ct_segmentation": {"kind": "head", "shape": (512, 512, 200), "label": "raw head CT 512x512x200"},
}

#: bundle -> overrides giving one slice / one window per forward pass (the naive configuration)
NAIVE_OVERRIDES: dict[str, dict[str, Any]] = {
    "cac_chest_cardiac_ct_segmentation": {"slab_batch_size": 1},
    "cac_orcascore_cascade_ct_segmentation": {"inferer#slice_batch_size": 1, "inferer#fp_batch_size": 1},
    "icac_ct_segmentation": {"sw_batch_size": 1},  # the shipped config already runs one 3D window per pass
    "isles2018_ctp_stroke_segmentation": {"sw_batch_size": 1},
}

SCALING_BUNDLE = "cac_chest_cardiac_ct_segmentation"
SCALING_SLICES = (60, 120, 240, 480)


# ----------------------------------------------------------------------------------------- child


class _Timed:
    """Wraps a callable and adds its wall time to ``self.seconds``."""

    def __init__(self, fn: Callable, sync: Callable[[], None]) -> None:
        self.fn, self.sync, self.seconds = fn, sync, 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self.fn(*a, **k)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space, in MB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a
    freshly exec'd child inherits in it the resident size of the parent it was spawned from (the
    kernel folds the pre-exec address space's high-water mark into the process's maxrss), so a
    small measurement run from a large parent reports the parent's memory. ``ru_maxrss`` remains
    the fallback where ``/proc`` is absent (kB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0


def _child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: see the module docstring."""
    import resource

    import torch

    from ctbundles.batch_inference import BundleRunner

    torch.set_num_threads(int(spec["threads"]))
    device = spec.get("device", "cpu")
    overrides = dict(spec.get("overrides") or {})
    overrides["device"] = f"$torch.device('{device}')"
    if spec.get("amp"):
        overrides["evaluator#amp"] = True
    cuda = device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)
    out_dir = Path(spec["work"])
    t0 = time.perf_counter()
    runner = BundleRunner(spec["bundle"], out_dir, overrides)
    setup_s = time.perf_counter() - t0
    if spec.get("naive"):
        torch.backends.cudnn.benchmark = False
    state = {"depth": 0, "t": 0.0, "seconds": 0.0, "calls": 0}

    def pre(_m, _i):
        if state["depth"] == 0:
            sync()
            state["t"] = time.perf_counter()
        state["depth"] += 1

    def post(_m, _i, _o):
        state["depth"] -= 1
        if state["depth"] == 0:
            sync()
            state["seconds"] += time.perf_counter() - state["t"]
            state["calls"] += 1

    nets = runner.networks()
    for net in nets:
        net.register_forward_pre_hook(pre)
        net.register_forward_hook(post)
    timed_pre = _Timed(runner.preprocessing, sync)
    runner.preprocessing = timed_pre
    runs = []
    for _ in range(int(spec.get("repeats", 1))):
        for p in out_dir.glob("*"):
            if p.is_file():
                p.unlink()
        state.update(seconds=0.0, calls=0)
        timed_pre.seconds = 0.0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        runner.run_case(spec["image"])
        sync()
        e2e = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        runs.append({"e2e_s": e2e, "cpu_s": cpu_s, "read_preprocess_s": timed_pre.seconds, "network_s": state["seconds"], "forward_calls": state["calls"],
                     "rest_s": e2e - timed_pre.seconds - state["seconds"]})
    result = {"setup_s": setup_s, "runs": runs, "networks": [type(n).__name__ for n in nets],
              "peak_rss_mb": peak_rss_mb(),
              "threads": torch.get_num_threads(), "outputs": sorted(p.name for p in out_dir.glob("*"))}
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for key in ("e2e_s", "cpu_s", "read_preprocess_s", "network_s", "rest_s"):
        values = sorted(r[key] for r in runs)
        result[key] = values[len(values) // 2]  # median of the repeats
    return result


def measure(spec: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess (``python -m ctbundles.benchmark --child``)."""
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work.parent / f"{work.name}.spec.json", work.parent / f"{work.name}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-m", "ctbundles.benchmark", "--child", str(spec_path)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stderr or proc.stdout or "")[-2000:]
        return {"error": f"child exited with status {proc.returncode}: {tail}"}
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------- parent


def speedup(naive: Mapping[str, Any], default: Mapping[str, Any], key: str = "e2e_s") -> float | None:
    """``naive[key] / default[key]`` (how many times faster the shipped configuration is)."""
    a, b = naive.get(key), default.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b <= 0:
        return None
    return a / b


def scaling_fit(points: Sequence[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares line ``y = a + b x`` through ``(slices, value)`` and the largest relative
    deviation of a point from it (a linear cost has a small one)."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    a = my - b * mx
    dev = max(abs(p[1] - (a + b * p[0])) / max(abs(p[1]), 1e-12) for p in points)
    return {"intercept": a, "per_slice": b, "max_rel_deviation": dev}


def _write_case(kind: str, shape: Sequence[int], folder: Path, seed: int = 0) -> str:
    """Generate one standard case (the project's synthetic generator) and return its input path."""
    from ctbundles.commands.synth import synthesize

    if folder.exists():
        shutil.rmtree(folder)
    if kind == "ctp":
        from ctbundles.datasets.isles2018 import stack_maps

        res = synthesize("ctp", folder / "isles", 1, seed=seed, layout="isles2018", shape=tuple(shape), progress=False)
        case_folder = Path(res["cases"][0]["paths"]["image"])
        return str(stack_maps(case_folder, folder / "ctp_case.nii.gz"))
    res = synthesize(kind, folder, 1, seed=seed, layout="nifti", shape=tuple(shape), progress=False)
    return res["cases"][0]["paths"]["image"]


def _prepare_bundle(name: str, work: Path, overrides: Mapping[str, Any], random_weights: bool | None) -> tuple[Path, str]:
    """The bundle folder to time and which weights it holds: the shipped ``models/`` when every
    checkpoint the inference config loads is there (and ``random_weights`` is not True), else a
    copy with random weights of the config's own networks."""
    from ctbundles.batch_inference import bundle_with_random_weights
    from ctbundles.bundle_runner import checkpoint_targets

    src = bundles_dir() / name
    targets = checkpoint_targets(src, overrides=dict(overrides, device="$torch.device('cpu')"), include_disabled=True)
    shipped = bool(targets) and all(Path(p).is_file() for p, _ in targets)
    if shipped and not random_weights:
        return src, "shipped models/ (" + ", ".join(sorted({Path(p).name for p, _ in targets})) + ")"
    dest = bundle_with_random_weights(src, work / f"bundle_{name}", overrides)
    return dest, "random initialisation of the config's network_def (a forward pass costs the same with any weights)"


def run_bench(out: str | os.PathLike, bundles: Sequence[str] | None = None, threads: int = 2, repeats: int = 1,
              scaling_slices: Sequence[int] | None = SCALING_SLICES, in_plane: int | None = None, devices: Sequence[str] | None = None,
              overrides: Mapping[str, Mapping[str, Any]] | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
              random_weights: bool | None = None, naive: bool = True, work: str | os.PathLike | None = None,
              progress: Callable[[str], None] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Measure every bundle and write ``bench.json`` and ``bench.md`` in ``out`` (atomically).

    Args:
        bundles: bundle names (default all four).
        threads: torch CPU threads of every measurement (2, the issue's CPU machine).
        repeats: timed repeats per measurement (the median is reported; all are kept in JSON).
        scaling_slices: slice counts of the chest CT scaling series (``None`` or empty: skipped).
        in_plane: replaces the 512 (or 256) in-plane size of every case (quick smoke runs).
        devices: ``["cpu"]`` and, when CUDA is available, ``"cuda"`` (default: both when present).
        overrides: bundle -> config overrides applied to every configuration (e.g. a tiny network).
        shapes: bundle -> case shape, replacing :data:`STANDARD_CASES`.
        random_weights: True forces random weights; default uses shipped weights when complete.
        naive: also time the naive configuration and report the speed-up.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    bundles = list(bundles or STANDARD_CASES)
    for b in bundles:
        if b not in STANDARD_CASES:
            raise ValueError(f"unknown bundle {b!r}; choose from {', '.join(STANDARD_CASES)}")
    cuda_ok = torch.cuda.is_available()
    devices = list(devices or (["cpu", "cuda"] if cuda_ok else ["cpu"]))
    if "cuda" in devices and not cuda_ok:
        progress("CUDA requested but not available: CPU only")
        devices = [d for d in devices if d != "cuda"]
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    tmp = Path(work) if work else Path(tempfile.mkdtemp(prefix="ctbundles_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if cuda_ok else None, "threads": threads},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeats": repeats, "bundles": {}, "scaling": None,
    }
    t_all = time.perf_counter()
    plan = []
    for b in bundles:
        plan += [(b, d, c) for d in devices for c in (["default", "naive"] if naive else ["default"]) + (["amp"] if d == "cuda" else [])]
    n_total = len(plan) + (len(scaling_slices) if scaling_slices and SCALING_BUNDLE in bundles else 0)
    step = 0

    def _shape(b: str) -> tuple[int, ...]:
        shape = tuple((shapes or {}).get(b, STANDARD_CASES[b]["shape"]))
        return (in_plane, in_plane, shape[2]) if in_plane else shape

    for b in bundles:
        ov = overrides.get(b, {})
        bundle_dir, weights = _prepare_bundle(b, tmp, ov, random_weights)
        shape = _shape(b)
        t0 = time.perf_counter()
        image = _write_case(STANDARD_CASES[b]["kind"], shape, tmp / f"case_{b}")
        progress(f"{b}: generated {STANDARD_CASES[b]['kind']} case {shape} in {time.perf_counter() - t0:.0f} s; weights: {weights}")
        entry: dict[str, Any] = {"case": STANDARD_CASES[b]["label"] if not in_plane and not (shapes or {}).get(b) else f"{STANDARD_CASES[b]['kind']} {'x'.join(map(str, shape))}",
                                 "shape": list(shape), "weights": weights, "results": {}}
        if ov:  # the --set overrides every configuration of this bundle ran with
            entry["overrides"] = dict(ov)
        for d in devices:
            for config in (["default", "naive"] if naive else ["default"]) + (["amp"] if d == "cuda" else []):
                step += 1
                spec = {"bundle": str(bundle_dir), "image": image, "threads": threads, "device": "cuda:0" if d == "cuda" else "cpu",
                        "repeats": repeats, "amp": config == "amp", "naive": config == "naive",
                        "overrides": {**ov, **(NAIVE_OVERRIDES[b] if config == "naive" else {})}, "work": str(tmp / f"run_{b}_{d}_{config}")}
                t0 = time.perf_counter()
                res = measure(spec, timeout=timeout)
                entry["results"][f"{d}/{config}"] = res
                progress(f"[{step}/{n_total}] {b} {d} {config}: " + (f"e2e {res['e2e_s']:.2f} s (CPU {res['cpu_s']:.0f} s), network {res['network_s']:.2f} s, "
                         f"peak RSS {res['peak_rss_mb']:.0f} MB" if "error" not in res else "ERROR " + res["error"][-300:])
                         + f" ({time.perf_counter() - t0:.0f} s wall) | elapsed {time.perf_counter() - t_all:.0f} s")
            if naive:
                entry["results"][f"{d}/speedup"] = {"e2e": speedup(entry["results"][f"{d}/naive"], entry["results"][f"{d}/default"]),
                                                     "network": speedup(entry["results"][f"{d}/naive"], entry["results"][f"{d}/default"], "network_s")}
        report["bundles"][b] = entry
        _write(out, report)  # partial results survive an interrupted run
        shutil.rmtree(tmp / f"case_{b}", ignore_errors=True)
        if scaling_slices and b == SCALING_BUNDLE:
            points = []
            for n in sorted(int(x) for x in scaling_slices):
                step += 1
                t0 = time.perf_counter()
                if n == shape[2] and "error" not in entry["results"].get("cpu/default", {"error": 1}):
                    res = dict(entry["results"]["cpu/default"], reused="cpu/default of the standard case")
                else:
                    image_n = _write_case("chest", (shape[0], shape[1], n), tmp / f"scale_{n}")
                    spec = {"bundle": str(bundle_dir), "image": image_n, "threads": threads, "device": "cpu", "repeats": repeats,
                            "overrides": ov, "work": str(tmp / f"run_scale_{n}")}
                    res = measure(spec, timeout=timeout)
                    shutil.rmtree(tmp / f"scale_{n}", ignore_errors=True)
                res["slices"] = n
                points.append(res)
                ok = [p for p in points if "error" not in p]
                report["scaling"] = {"bundle": b, "in_plane": list(shape[:2]), "weights": weights, "device": "cpu", "points": points,
                                     "time_fit": scaling_fit([(p["slices"], p["e2e_s"]) for p in ok]),
                                     "memory_fit": scaling_fit([(p["slices"], p["peak_rss_mb"]) for p in ok])}
                _write(out, report)
                progress(f"[{step}/{n_total}] scaling {n} slices: " + (f"e2e {res['e2e_s']:.2f} s (CPU {res['cpu_s']:.0f} s), peak RSS {res['peak_rss_mb']:.0f} MB"
                         if "error" not in res else "ERROR " + res["error"][-300:]) + f" ({time.perf_counter() - t0:.0f} s wall)")
    report["total_s"] = time.perf_counter() - t_all
    _write(out, report)
    if not work:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _write(out: Path, report: Mapping[str, Any]) -> None:
    atomic_write_json(out / "bench.json", report)
    atomic_write_text(out / "bench.md", to_markdown(report))


def _f(v: Any, digits: int = 2) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """The benchmark as Markdown: machine, one latency table, the speed-ups and the scaling series."""
    m = report.get("machine", {})
    lines = ["# ctbundles bench", "",
             f"Machine: {m.get('processor')} ({m.get('cpu_count')} CPUs visible), {m.get('platform')}, torch {m.get('torch')}, "
             f"CUDA device: {m.get('cuda') or 'none'}; torch threads per measurement: {m.get('threads')}. "
             f"Started {report.get('started_utc')}; repeats per measurement: {report.get('repeats')} (median reported).", "",
             "## Latency per case", "",
             "Wall-clock seconds on the machine as it was (shared machines inflate them; the process CPU column "
             "is the CPU time the measurement itself used, at most threads x wall).", "",
             "| bundle | case | device / config | end to end (s) | process CPU (s) | read + preprocess (s) | network (s) | rest (s) | forward calls | peak RSS (MB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    speed = []
    for b, entry in report.get("bundles", {}).items():
        for key, r in entry["results"].items():
            if key.endswith("/speedup"):
                speed.append(f"| {b} | {key.split('/')[0]} | {_f(r.get('e2e'))} | {_f(r.get('network'))} |")
                continue
            if "error" in r:
                lines.append(f"| {b} | {entry['case']} | {key} | error: {r['error'][-120:].splitlines()[-1] if r['error'] else ''} | | | | | | |")
                continue
            lines.append(f"| {b} | {entry['case']} | {key} | {_f(r['e2e_s'])} | {_f(r.get('cpu_s'), 0)} | {_f(r['read_preprocess_s'])} | {_f(r['network_s'])} | "
                         f"{_f(r['rest_s'])} | {r['runs'][0]['forward_calls']} | {_f(r['peak_rss_mb'], 0)} |")
    lines += ["", "Weights: " + "; ".join(f"{b}: {e['weights']}" for b, e in report.get("bundles", {}).items()) + "."]
    sets = [f"{b}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in e["overrides"].items())
            for b, e in report.get("bundles", {}).items() if e.get("overrides")]
    if sets:
        lines += ["", "Config overrides (`--set`, every configuration of the bundle): " + "; ".join(sets) + "."]
    if speed:
        lines += ["", "## Speed-up of the shipped configuration over the naive one", "",
                  "Naive: one slice or one window per forward pass, fp32, no cuDNN autotuning, in the same run. "
                  "Ratio = naive time / shipped time.", "",
                  "| bundle | device | end-to-end ratio | network ratio |", "|---|---|---:|---:|", *speed]
    sc = report.get("scaling")
    if sc:
        lines += ["", f"## Scaling with the number of slices ({sc['bundle']}, {sc['in_plane'][0]}x{sc['in_plane'][1]} in-plane, {sc['device']})", "",
                  "Each size in a fresh process; peak RSS is the process's maximum resident memory (VmHWM).", "",
                  "| slices | end to end (s) | process CPU (s) | network (s) | s per slice | peak RSS (MB) |", "|---:|---:|---:|---:|---:|---:|"]
        for p in sc["points"]:
            if "error" in p:
                lines.append(f"| {p['slices']} | error | | | | |")
                continue
            lines.append(f"| {p['slices']} | {_f(p['e2e_s'])} | {_f(p.get('cpu_s'), 0)} | {_f(p['network_s'])} | {_f(p['e2e_s'] / p['slices'], 3)} | {_f(p['peak_rss_mb'], 0)} |")
        tf, mf = sc.get("time_fit"), sc.get("memory_fit")
        if tf:
            lines += ["", f"Least-squares line, time: {_f(tf['intercept'])} s + {_f(tf['per_slice'], 4)} s per slice "
                          f"(largest deviation of a point {100 * tf['max_rel_deviation']:.1f} %)."]
        if mf:
            lines += [f"Memory: {_f(mf['intercept'], 0)} MB + {_f(mf['per_slice'], 2)} MB per slice "
                      f"(largest deviation {100 * mf['max_rel_deviation']:.1f} %)."]
    lines += ["", f"Total benchmark wall time: {_f(report.get('total_s'), 0)} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctbundles.benchmark")
    p.add_argument("--child", metavar="SPEC_JSON", required=True, help="internal: run one measurement described by SPEC_JSON")
    args = p.parse_args(argv)
    spec = json.loads(Path(args.child).read_text())
    result = _child(spec)
    atomic_write_json(spec["result"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
