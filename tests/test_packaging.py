"""A non-editable install (a wheel in a fresh virtual environment) ships everything the
library reads at run time: the paper's reference scores are package data."""
import pathlib
import subprocess
import sys
import sysconfig

REPO = pathlib.Path(__file__).resolve().parent.parent

# Run in the fresh environment, away from the source tree: the end-of-run summary of a
# paper-budget Atari run reads the reference scores.
PROBE = """
import pathlib, sys
import mlr_jax
from mlr_jax import evaluation
assert pathlib.Path(mlr_jax.__file__).resolve().is_relative_to(pathlib.Path(sys.prefix).resolve()), mlr_jax.__file__
summary = evaluation.summarize_scores("atari", "pong", [3.0, 5.0], budget="100k")
assert summary["paper"]["MLR"]["mean"] == 4.9, summary
assert evaluation.paper_reference("dmc", "walker_walk", "500k")["MLR"]["mean"] > 0
print("ok", mlr_jax.__file__)
"""


def _run(*cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_wheel_installed_in_a_fresh_venv_finds_its_reference_scores(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("mlr_jax-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel), cwd=tmp_path)
    # the dependencies (jax, numpy, ...) come from this environment, not the package itself
    site = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=tmp_path).strip()
    pathlib.Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = _run(str(python), "-c", PROBE, cwd=tmp_path)
    assert out.startswith("ok ") and str(venv) in out
