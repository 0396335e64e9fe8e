"""The GPU install: scripts/check_gpu_install.py's reading of a pip resolution, and setup.sh's
refusal of the combination that would load two CUDA stacks (the resolution itself needs PyPI:
its committed records are benchmarks/results/gpu_install_*.json)."""
import importlib.util
import json
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_gpu_install", ROOT / "scripts" / "check_gpu_install.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_a_library_shipped_by_two_packages_is_found():
    assert check.library("nvidia-cudnn-cu13") == check.library("nvidia_cudnn_cu12") == "cudnn"
    assert check.library("nvidia-cublas") == check.library("nvidia-cublas-cu12") == "cublas"
    assert check.library("torch") is None
    one_set = {"nvidia-cudnn-cu13": "9.20", "nvidia-cublas": "13.1", "nvidia-nccl-cu13": "2.29", "torch": "2.13"}
    assert check.duplicates(one_set) == {}
    two = {**one_set, "nvidia-cudnn-cu12": "9.28", "nvidia-cublas-cu12": "12.9"}
    assert check.duplicates(two) == {"cublas": ["nvidia-cublas", "nvidia-cublas-cu12"],
                                     "cudnn": ["nvidia-cudnn-cu12", "nvidia-cudnn-cu13"]}


def test_committed_resolutions_say_which_extra_is_consistent():
    records = {json.loads(p.read_text())["jax_extra"]: json.loads(p.read_text())
               for p in sorted((ROOT / "benchmarks" / "results").glob("gpu_install_*.json"))}
    assert records["cuda13"]["consistent"] and not records["cuda12"]["consistent"]
    for record in records.values():  # each verdict follows from its own package list
        assert check.duplicates(record["nvidia_packages"]) == record["duplicated_libraries"]


def test_setup_refuses_cuda12_with_the_torch_comparison():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--jax=cuda12", "--bench"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Use --jax=cuda13" in done.stderr
    assert "nvidia-cudnn-cu12" in done.stderr and not done.stdout  # refused before installing anything
