"""The Makefile's PYTHON: each interpreter named gets a venv of its own, pyenv's shims are found,
and an interpreter that cannot run roomchat is refused with one line. (`make -n`: nothing is
installed or run; CI runs the whole suite under 3.11 and 3.13, see .ci/run.)"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, require_program


def make_n(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """`make -n ARGS lint` in the checkout: what make would do, without doing it (with `path`
    as PATH, if given)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV", "MAKEFLAGS", "MAKELEVEL")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([require_program("make", "apt-get install make"), "-n", "--no-print-directory",
                           *args, "lint"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_default_python_keeps_dot_venv():
    """Without PYTHON, the venv is .venv, as README's commands say."""
    result = make_n()
    assert result.returncode == 0, result.stderr
    assert ".venv/bin/ruff check ." in result.stdout


def test_a_named_python_gets_a_venv_of_its_own():
    """PYTHON=... builds and uses .venv-X.Y, so switching between Pythons rebuilds neither venv."""
    result = make_n(f"PYTHON={sys.executable}")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert result.returncode == 0, result.stderr
    assert f".venv-{version}/bin/ruff check ." in result.stdout


def test_installing_for_tests_counts_as_installing_for_run(tmp_path):
    """A venv that gets the dev requirements (requirements.txt among them) gets the run stamp
    too: `make run`, started by tests while `make test` runs them, finds nothing to install."""
    venv = tmp_path / "v"
    result = make_n(f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    assert f"touch {venv}/.dev-installed {venv}/.run-installed" in result.stdout.splitlines(), result.stdout


def test_a_python_that_cannot_run_roomchat_is_refused_in_one_line():
    """A name that runs nothing, or a Python older than 3.11, stops make with one line naming it."""
    for name in ("python3.99", *(["python2.7"] if shutil.which("python2.7") else [])):
        result = make_n(f"PYTHON={name}")
        assert result.returncode != 0
        assert f"PYTHON={name} is not a Python 3.11 or newer" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("on_path", [True, False], ids=["pyenv-on-path", "pyenv-not-on-path"])
def test_pyenv_versions_are_found_by_their_shim_names(on_path):
    """`PYTHON=python3.X` works for any Python pyenv has installed, though pyenv's global version
    is another (its shim alone answers "command not found"), and in a shell without pyenv on
    PATH (CI's, say)."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        pytest.skip("pyenv is not installed here: nothing of it to find")
    versions = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True).stdout.split()
    other = [v for v in versions if v.count(".") == 2 and v.startswith("3.") and int(v.split(".")[1]) >= 11
             and not v.startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")]
    if not other:
        pytest.skip("pyenv has no Python 3.11+ besides this one")
    minor = ".".join(other[-1].split(".")[:2])
    dirs = os.environ["PATH"].split(os.pathsep)
    path = None if on_path else os.pathsep.join(
        d for d in dirs if "pyenv" not in d and not shutil.which(f"python{minor}", path=d))
    result = make_n(f"PYTHON=python{minor}", path=path)
    assert result.returncode == 0, result.stderr
    assert f".venv-{minor}/bin/ruff check ." in result.stdout


def test_readme_lists_the_packages_ci_installs():
    """README's Tests section names exactly the Debian packages .ci/run installs (Node.js and npm
    aside: those only feed `make bench`, and come only when missing)."""
    ci = (ROOT / ".ci" / "run").read_text()
    installed = set(re.search(r'packages="([^"]+)"', ci).group(1).split())
    readme = (ROOT / "README.md").read_text()
    listed = set(re.search(r"\.ci/run\]\(\.ci/run\) installs them all\s+\(`([^`]+)`\)", readme).group(1).split())
    assert listed == installed
