"""Model Zoo export (ctbundles.zoo_export): vendoring, rewriting, zoo checks, ONNX, self-contained runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ctbundles import zoo_export as z
from ctbundles.errors import CTInputError
from tests_support import BUNDLES_DIR, list_bundles

ICAC = "icac_ct_segmentation"

# ``python RUNNER MODULE ARGS`` runs ``python -m MODULE ARGS`` with the top-level name ``ctbundles``
# unimportable, the repository off sys.path and the working folder (the unzipped bundle) first on
# sys.path, as ``python -m`` from that folder does.
BLOCKED_RUNNER = textwrap.dedent(
    """
    import importlib.abc, os, runpy, sys, sysconfig

    class BlockCtbundles(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ctbundles" or name.startswith("ctbundles."):
                raise ImportError(f"blocked in the self-contained test: {name}")
            return None

    sys.meta_path.insert(0, BlockCtbundles())
    # the repository's own folders leave sys.path; the environment's package folders stay, also when the
    # virtual environment lives inside the repository (.venv)
    packages = {os.path.abspath(sysconfig.get_path(k)) for k in ("purelib", "platlib")}
    sys.path[:] = [os.getcwd()] + [p for p in sys.path[1:] if p and (os.path.abspath(p) in packages
                                                                     or not os.path.abspath(p).startswith(REPO_ROOT))]
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    """
)
REPO = str(BUNDLES_DIR.parent)


def weighted_copy(name: str, dest: Path, seed: int = 0) -> Path:
    """A copy of bundle ``name`` with random weights saved for each network of inference.json."""
    from monai.bundle import ConfigParser

    bundle = dest / name
    shutil.copytree(BUNDLES_DIR / name, bundle, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(seed)
    (bundle / "models").mkdir(exist_ok=True)
    for net_id in z.network_ids(parser.config):
        torch.save(parser.get_parsed_content(net_id).state_dict(), bundle / "models" / z.checkpoint_name(net_id))
    return bundle


def unzip(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        zf.extractall(dest)
    tops = {n.split("/", 1)[0] for n in names}
    assert len(tops) == 1, tops
    return dest / tops.pop()


def run_blocked(folder: Path, args: list[str], tmp: Path, timeout: float = 600, module: str = "monai.bundle") -> subprocess.CompletedProcess:
    runner = tmp / "blocked_monai_bundle.py"
    runner.write_text(BLOCKED_RUNNER.replace("REPO_ROOT", repr(REPO)))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp)}
    return subprocess.run([sys.executable, str(runner), module, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def icac_export(tmp_path_factory):
    """(source copy with weights, unzipped export folder, zip path) of the ICAC bundle."""
    tmp = tmp_path_factory.mktemp("icac_export")
    bundle = weighted_copy(ICAC, tmp / "src")
    zip_path = z.export_bundle(bundle, tmp / "out").zip_path
    folder = unzip(zip_path, tmp / "unzipped")
    return bundle, folder, zip_path


# --------------------------------------------------------------------------- vendoring on fake packages


@pytest.fixture()
def fakepkg(tmp_path, monkeypatch):
    """A tiny package ``fakepkg``: a -> b (function-local import) -> c.sub; d is never reached."""
    root = tmp_path / "site" / "fakepkg"
    (root / "c").mkdir(parents=True)
    (root / "__init__.py").write_text('"""fake package."""\n')
    (root / "a.py").write_text("import os\nimport numpy as np\nfrom fakepkg import b\n\nX = 1\n")
    (root / "b.py").write_text(
        'def f():\n    from fakepkg.c.sub import g\n    return g()\n\nNAME = "fakepkg.e:h"\nPROSE = "see fakepkg.d for details"\n'
    )
    (root / "c" / "__init__.py").write_text("")
    (root / "c" / "sub.py").write_text("import scipy.ndimage\n\ndef g():\n    return 2\n")
    (root / "d.py").write_text("import torch\n")
    (root / "e.py").write_text("def h():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [n for n in sys.modules if n == "fakepkg" or n.startswith("fakepkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return root


def test_vendor_closure_follows_imports_transitively(fakepkg):
    modules, third = z.vendor_closure(["fakepkg.a.X"], package="fakepkg")
    # a (from the attribute reference), b (from-import of a sub-module), c.sub (function-local import),
    # e (a "module:attr" string constant), and the parent packages; never d (only named in prose).
    assert sorted(modules) == ["fakepkg", "fakepkg.a", "fakepkg.b", "fakepkg.c", "fakepkg.c.sub", "fakepkg.e"]
    assert modules["fakepkg.c"][1] is True and modules["fakepkg.c.sub"][1] is False
    assert third == {"os", "numpy", "scipy"}
    assert z.pinned_distributions(third) .keys() == {"numpy", "scipy"}


def test_vendored_fake_package_imports_under_scripts(fakepkg, tmp_path, monkeypatch):
    """The closure of fakepkg.a, rewritten into vendor/scripts/fakepkg, runs with fakepkg hidden."""
    modules, _ = z.vendor_closure(["fakepkg.a"], package="fakepkg")
    vendor = tmp_path / "vendor"
    (vendor / "scripts").mkdir(parents=True)
    (vendor / "scripts" / "__init__.py").write_text("")
    for name, (path, is_pkg) in modules.items():
        rel = Path(*name.split("."))
        target = vendor / "scripts" / (rel / "__init__.py" if is_pkg else rel.with_suffix(".py"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(z.rewrite_python(path.read_text(), package="fakepkg"))
    assert "from scripts.fakepkg.c.sub import g" in (vendor / "scripts" / "fakepkg" / "b.py").read_text()
    assert 'PROSE = "see fakepkg.d for details"' in (vendor / "scripts" / "fakepkg" / "b.py").read_text()
    monkeypatch.setattr(sys, "path", [str(vendor)] + [p for p in sys.path if p != str(fakepkg.parent)])
    for name in [n for n in sys.modules if n.split(".")[0] in ("fakepkg", "scripts")]:
        monkeypatch.delitem(sys.modules, name)
    import importlib

    b = importlib.import_module("scripts.fakepkg.b")
    assert b.f() == 2 and b.NAME == "scripts.fakepkg.e:h"
    assert not [n for n in sys.modules if n.split(".")[0] == "fakepkg"]
    for name in [n for n in sys.modules if n.split(".")[0] == "scripts"]:
        del sys.modules[name]  # imported by this test only


def test_vendor_closure_refuses_unknown_root(fakepkg):
    with pytest.raises(CTInputError, match="fakepkg.nothere"):
        z.vendor_closure(["fakepkg.nothere"], package="fakepkg")


def test_rewrite_python_moves_every_module_reference_and_keeps_prose():
    source = textwrap.dedent(
        '''\
        """Docstring naming ctbundles.transforms and ctbundles stays."""
        import ctbundles.transforms.ct_io
        import ctbundles.errors as errors
        from ctbundles.atomic_io import atomic_write  # ctbundles comment stays
        from ctbundles import (
            lazy_exports,
        )
        import numpy  # not ours

        TARGET = "ctbundles.synthetic.ctp:generate_ctp_patient"
        PROSE = "ctbundles is a package"
        OTHER = "ctbundlesx.a"


        def f(name):
            mod = f"ctbundles.commands.{name}"
            return ctbundles.transforms.ct_io.load_ct, mod, "é", obj.ctbundles
        '''
    )
    out = z.rewrite_python(source)
    assert out.splitlines()[0] == '"""Docstring naming ctbundles.transforms and ctbundles stays."""'
    assert "import scripts.ctbundles.transforms.ct_io\n" in out
    assert "import scripts.ctbundles.errors as errors\n" in out
    assert "from scripts.ctbundles.atomic_io import atomic_write  # ctbundles comment stays\n" in out
    assert "from scripts.ctbundles import (\n" in out
    assert 'TARGET = "scripts.ctbundles.synthetic.ctp:generate_ctp_patient"' in out
    assert 'PROSE = "ctbundles is a package"' in out and 'OTHER = "ctbundlesx.a"' in out
    assert 'mod = f"scripts.ctbundles.commands.{name}"' in out
    assert 'return scripts.ctbundles.transforms.ct_io.load_ct, mod, "é", obj.ctbundles' in out
    assert "import numpy  # not ours" in out
    ours, _ = z.python_references(out)
    assert ours == set(), ours


def test_rewrite_config_targets_expressions_and_imports():
    config = {
        "imports": ["$import glob", "$import ctbundles", "$import ctbundles.networks.ms_dcnn", "$from ctbundles.errors import CTInputError"],
        "network_def": {"_target_": "ctbundles.networks.ms_dcnn.MSDCNN", "in_channels": 4},
        "datalist": "$ctbundles.metrics.isles_evaluation.isles_datalist(@dataset_dir)",
        "lazy": "$monai.utils.optional_import('ctbundles.networks', name='x')",
        "text": "made with ctbundles.networks by ctbundles contributors",
        "other": "$foo.ctbundles + 1",
        "number": 3,
    }
    out = z.rewrite_config(config)
    assert out["imports"] == ["$import glob", "$import scripts", "$import scripts.ctbundles.networks.ms_dcnn", "$from scripts.ctbundles.errors import CTInputError"]
    assert out["network_def"] == {"_target_": "scripts.ctbundles.networks.ms_dcnn.MSDCNN", "in_channels": 4}
    assert out["datalist"] == "$scripts.ctbundles.metrics.isles_evaluation.isles_datalist(@dataset_dir)"
    assert out["lazy"] == "$monai.utils.optional_import('scripts.ctbundles.networks', name='x')"
    assert out["text"] == config["text"] and out["other"] == "$foo.ctbundles + 1" and out["number"] == 3
    assert z.config_references(out)[0] == set()


def test_checkpoint_names_of_the_cascade_networks():
    config = {"fp_network_def": {}, "network_def": {}, "roi_network_def": {}, "network": "$@network_def"}
    assert z.network_ids(config) == ["network_def", "fp_network_def", "roi_network_def"]
    assert [z.checkpoint_name(i) for i in z.network_ids(config)] == ["model.pt", "model_fp.pt", "model_roi.pt"]
    assert z.checkpoint_name("roi_network_def", ".onnx") == "model_roi.onnx"


def test_exact_version_drops_local_label():
    assert z.exact_version("2.13.0+cpu") == "2.13.0"
    assert z.exact_version("1.6.1") == "1.6.1"


# --------------------------------------------------------------------------- export


def test_export_without_weights_names_the_missing_file(tmp_path):
    bundle = tmp_path / ICAC
    shutil.copytree(BUNDLES_DIR / ICAC, bundle)
    (bundle / "models" / "model.pt").unlink(missing_ok=True)
    with pytest.raises(CTInputError, match=r"models/model\.pt: missing"):
        z.export_bundle(bundle, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.zip"))


def test_export_layout_vendored_code_and_pinned_packages(icac_export):
    bundle, folder, zip_path = icac_export
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert zip_path.name == f"{ICAC}_v{meta['version']}.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    for rel in z.REQUIRED_FILES:
        assert (folder / rel).is_file(), rel
    assert (folder / "scripts" / "__init__.py").is_file()
    assert (folder / "scripts" / "make_synthetic_cohort.py").is_file()  # the bundle's own script travels too
    net = folder / "scripts" / "ctbundles" / "networks" / "icac_fcn.py"
    assert net.is_file() and (folder / "scripts" / "ctbundles" / "networks" / "__init__.py").is_file()
    assert not (folder / "scripts" / "ctbundles" / "networks" / "dense_ra_unet.py").exists()  # not reached
    assert not (folder / "scripts" / "ctbundles" / "commands").exists()
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "scripts.ctbundles.networks.icac_fcn.ICACFCN"
    assert "$import scripts" in inference["imports"]
    exported = json.loads((folder / "configs" / "metadata.json").read_text())
    pins = exported["required_packages_version"]
    assert "ctbundles" not in pins
    assert pins["torch"] == torch.__version__.split("+")[0] and pins["numpy"] == np.__version__
    assert {"monai", "nibabel", "pytorch-ignite"} <= set(pins)
    assert "onnx" not in pins and "pytest" not in pins
    assert {k: v for k, v in exported.items() if k != "required_packages_version"} == {
        k: v for k, v in meta.items() if k != "required_packages_version"
    }


def test_zoo_checks_pass_on_export(icac_export, zoo_schema):
    _, _, zip_path = icac_export
    assert z.zoo_check(zip_path, schema=zoo_schema, net_checks=False) == []


@pytest.mark.parametrize(
    "breakage, check, words",
    [
        ("licence", "files", "LICENSE"),
        ("changelog", "changelog", "not a key of 'changelog'"),
        ("schema", "schema", "authors"),
        ("version", "versions", "2.13.0+cpu"),
        ("large", "large_files", "big.bin"),
        ("leftover", "self-contained", "ctbundles.networks"),
    ],
)
def test_zoo_checks_name_what_is_broken(icac_export, zoo_schema, tmp_path, breakage, check, words):
    _, folder, _ = icac_export
    broken = tmp_path / ICAC
    shutil.copytree(folder, broken)
    meta_path = broken / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if breakage == "licence":
        (broken / "LICENSE").unlink()
    elif breakage == "changelog":
        meta["version"] = "9.9.9"  # a version the changelog does not list
    elif breakage == "schema":
        meta["authors"] = 42
    elif breakage == "version":
        meta["pytorch_version"] = "2.13.0+cpu"
    elif breakage == "large":
        with open(broken / "models" / "big.bin", "wb") as f:
            f.truncate(z.LARGE_FILE_BYTES + 1)
    elif breakage == "leftover":
        cfg = json.loads((broken / "configs" / "inference.json").read_text())
        cfg["network_def"]["_target_"] = "ctbundles.networks.icac_fcn.ICACFCN"
        (broken / "configs" / "inference.json").write_text(json.dumps(cfg))
    meta_path.write_text(json.dumps(meta))
    problems = z.zoo_check(broken, schema=zoo_schema, net_checks=False)
    assert problems, "the broken bundle passed"
    assert {p.check for p in problems} == {check}, problems
    assert any(words in p.message for p in problems), problems
    if breakage == "large":  # listing it (with its md5) fixes it
        z.write_large_files_yml(broken)
        assert z.zoo_check(broken, schema=zoo_schema, net_checks=False) == []


def test_zoo_check_without_schema_fails_with_reason(icac_export, monkeypatch, tmp_path):
    _, folder, _ = icac_export
    monkeypatch.setenv("CTBUNDLES_ZOO_SCHEMA", str(tmp_path / "absent.json"))
    problems = z.zoo_check(folder, net_checks=False)
    assert [p.check for p in problems] == ["schema"] and "not found" in problems[0].message


def test_export_runs_from_its_own_folder_without_ctbundles(icac_export, tmp_path):
    """The unzipped ICAC export segments a tiny synthetic head where ``ctbundles`` cannot be imported."""
    import nibabel as nib

    from ctbundles.synthetic.head import generate_head

    _, folder, _ = icac_export
    case = generate_head(3, shape=(40, 36, 12), spacing=(1.8, 1.8, 2.5))
    data = tmp_path / "data"
    data.mkdir()
    affine = np.array(case.affine, dtype=float)
    nib.save(nib.Nifti1Image(case.image.astype(np.int16), affine), str(data / "head.nii.gz"))
    out = tmp_path / "pred"
    # Small overrides: no registration, an 8 x 8 x 4 network frame and the patch that covers it in one pass.
    proc = run_blocked(folder, [
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data), "--output_dir", str(out),
        "--register_to_reference", "False", "--frame_shape", "[8,8,4]", "--frame_spacing", "[1.8,1.8,2.5]",
        "--patch_size", "[92,92,40]", "--overlap", "0",
    ], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scripts.ctbundles" in proc.stdout + proc.stderr  # the vendored code ran
    pred = nib.load(str(out / "head_seg.nii.gz"))
    assert pred.shape == case.image.shape
    np.testing.assert_allclose(pred.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    report = json.loads((out / "head.json").read_text())
    assert report, "empty ICAC volume report"


def test_blocker_really_blocks(tmp_path):
    """The self-contained runner hides ``ctbundles`` (installed here) but not a folder's own ``scripts``."""
    folder = tmp_path / "b"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "__init__.py").write_text("VALUE = 7\n")
    (folder / "probe.py").write_text("import scripts\nprint('scripts', scripts.VALUE)\nimport ctbundles\n")
    proc = run_blocked(folder, [], tmp_path, timeout=120, module="probe")
    assert "scripts 7" in proc.stdout
    assert proc.returncode != 0 and "ImportError: blocked in the self-contained test: ctbundles" in proc.stderr


def test_onnx_parity_icac(icac_export, tmp_path):
    _, folder, _ = icac_export
    work = tmp_path / ICAC
    shutil.copytree(folder, work)
    results = z.onnx_export(work, shape={"network_def": [1, 92, 92, 40]})
    assert [r["net_id"] for r in results] == ["network_def"]
    r = results[0]
    assert (work / "models" / "model.onnx").is_file() and r["opset"] == z.ONNX_OPSET
    assert r["input_shape"] == [1, 1, 92, 92, 40]
    assert r["ok"] and r["max_abs_diff"] <= z.ONNX_ATOL * max(1.0, r["max_abs_eager"])


# --------------------------------------------------------------------------- every bundle (slow)

# A tiny synthetic case per bundle and the overrides that keep its inference small.
SMALL_RUNS = {
    "icac_ct_segmentation": ("head", ["--register_to_reference", "False", "--frame_shape", "[8,8,4]", "--frame_spacing", "[1.8,1.8,2.5]", "--patch_size", "[92,92,40]", "--overlap", "0"]),
    "cac_chest_cardiac_ct_segmentation": ("chest", ["--in_plane_size", "[64,64]", "--slab_batch_size", "4", "--refuse_findings", "[]"]),
    "cac_orcascore_cascade_ct_segmentation": ("cardiac", []),
    "isles2018_ctp_stroke_segmentation": ("ctp", ["--roi_size", "[64,64]"]),
}


def _tiny_case(kind: str, data: Path) -> tuple[Path, tuple]:
    import nibabel as nib

    rng = np.random.default_rng(0)
    if kind == "ctp":
        image = rng.uniform(0, 100, size=(48, 48, 3, 4)).astype(np.float32)
        shape = image.shape[:3]
    else:
        image = rng.normal(40, 20, size=(48, 48, 10)).astype(np.int16)
        image[20:24, 20:24, 4:6] = 600
        shape = image.shape
    path = data / "case.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 3.0, 1.0])), str(path))
    return path, shape


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in list_bundles()])
def test_every_bundle_exports_passes_zoo_checks_and_runs_alone(name, tmp_path, zoo_schema):
    import nibabel as nib

    bundle = weighted_copy(name, tmp_path / "src")
    result = z.export_bundle(bundle, tmp_path / "out", check=True, schema=zoo_schema)
    folder = unzip(result.zip_path, tmp_path / "unzipped")
    assert z.zoo_check(result.zip_path, schema=zoo_schema, net_checks=False) == []
    data = tmp_path / "data"
    data.mkdir()
    kind, overrides = SMALL_RUNS[name]
    _, shape = _tiny_case(kind, data)
    out = tmp_path / "pred"
    proc = run_blocked(folder, ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(data), "--output_dir", str(out), *overrides], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    preds = sorted(out.glob("*seg.nii*"))
    assert len(preds) == 1, list(out.iterdir())
    assert nib.load(str(preds[0])).shape[:3] == shape


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in list_bundles()])
def test_every_network_exports_to_onnx_within_tolerance(name, tmp_path):
    bundle = weighted_copy(name, tmp_path / "src")
    staged = tmp_path / "staged" / name
    staged.mkdir(parents=True)
    z.stage_bundle(bundle, staged)
    shape = {"network_def": [1, 92, 92, 40]} if name == ICAC else None
    results = z.onnx_export(staged, shape=shape)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    assert [r["net_id"] for r in results] == z.network_ids(parser.config)
    for r in results:
        print(f"ONNX {name} {r['net_id']}: input {r['input_shape']}, max |onnx - eager| {r['max_abs_diff']:.3e}, max |eager| {r['max_abs_eager']:.3e}")
        assert r["ok"], r
        assert (staged / r["onnx"]).is_file()
