"""ansible-test over the klpd.fleet collection: sanity (the module checks) and units.

ansible-test runs each sanity test in a virtual environment of its own and bootstraps pip
into it with a script it downloads from a host this machine cannot reach. Everything it
needs is provided locally instead: a HOME under build/ holding a stand-in for that
bootstrap script (get_pip_offline.py: CPython's bundled pip, then the pinned versions from
the package index) and a pip configuration carrying this machine's PIP_* settings, which
ansible-test does not pass on to pip. The environments are kept under build/ (a cache:
a fresh checkout builds them again, in about five minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible/ansible_collections/klpd/fleet"
HOME = REPO / "build/ansible-test/home"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SANITY_TESTS = ("validate-modules", "import", "compile", "pep8", "pylint", "ansible-doc")


def _prepare_home() -> dict[str, str]:
    # ansible-test ships no type information; this is its own table of venv pip versions
    from ansible_test._internal.python_requirements import (  # type: ignore[import-untyped]
        get_venv_packages,
    )

    pip_version: str = get_venv_packages(SimpleNamespace(version=PYTHON))["pip"]
    cache = HOME / ".ansible/test/cache"
    cache.mkdir(parents=True, exist_ok=True)
    bootstrap = cache / f"get_pip_{pip_version.replace('.', '_')}.py"
    shutil.copyfile(Path(__file__).with_name("get_pip_offline.py"), bootstrap)
    pip_conf = HOME / ".config/pip/pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    settings = sorted((k[4:].lower().replace("_", "-"), v) for k, v in os.environ.items()
                      if k.startswith("PIP_") and k != "PIP_CONFIG_FILE")  # fmt: skip
    pip_conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings))
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "HOME": str(HOME),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_HOME": str(HOME / ".ansible"),
    }


def _ansible_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-test"), *args, "--python", PYTHON],
        cwd=COLLECTION,
        env=_prepare_home(),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_ansible_test_sanity() -> None:
    done = _ansible_test("sanity", *(f"--test={t}" for t in SANITY_TESTS))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    for test in SANITY_TESTS:
        assert f'Running sanity test "{test}"' in out, out[-8000:]
    assert "Skipping" not in out, out[-8000:]


def test_ansible_test_units() -> None:
    done = _ansible_test("units")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    assert " passed" in out and " failed" not in out, out[-8000:]
