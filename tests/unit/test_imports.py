"""The science imports without Ray; the public API resolves."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["alray", "alray.model", "alray.acquisition", "alray.pool",
                                    "alray.pool.validate", "alray.train"])
def test_no_ray_on_import(module):
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_resolves():
    import alray
    for name in alray.__all__:
        obj = getattr(alray, name)
        if name.isupper():  # a constant: the names of the strategies
            assert obj and all(isinstance(item, str) for item in obj), name
        else:  # a class or function of alray's own, exported under its own name
            assert callable(obj) and obj.__name__ == name, name
            assert obj.__module__.startswith("alray."), (name, obj.__module__)
    with pytest.raises(AttributeError):
        alray.nothing_here  # noqa: B018


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "alray", "validate", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "no such file" in out.stderr
