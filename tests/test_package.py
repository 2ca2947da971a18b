"""The installed distribution: one package name, lazy public exports, the console command."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("ctbundles.transforms", "ctbundles.networks", "ctbundles.losses", "ctbundles.handlers", "ctbundles.synthetic", "ctbundles.metrics", "ctbundles.datasets")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_installed_code_imports_only_under_ctbundles(tmp_path):
    """Outside the source tree, the design card's folders exist only as ctbundles.* sub-packages."""
    code = (
        "import importlib.util as u; "
        "print([n for n in ('networks', 'transforms', 'handlers', 'synthetic', 'datasets', 'metrics', 'losses', 'core') "
        "if u.find_spec(n) is not None]); "
        "import ctbundles.networks, ctbundles.transforms, ctbundles.losses; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "ok"]


def test_console_command_lists_its_subcommands(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ctbundles", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    for command in ("check", "score", "synth", "datalist", "demo"):
        assert command in out
    for command in ("check", "score", "synth", "datalist", "demo"):
        sub = subprocess.run([sys.executable, "-m", "ctbundles", command, "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: ctbundles " + command in sub.stdout
