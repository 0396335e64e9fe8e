"""Check, without a GPU, that `scripts/setup.sh --jax=KIND --bench` installs ONE set of NVIDIA
libraries for jax and torch.

It asks pip to resolve what setup.sh installs in its one resolution (``jax[KIND]==<this jax>``
and benchmarks/requirements-torch.txt) against PyPI, as a GPU machine would see it: this
machine's own wheels (a CPU torch in /opt/wheels, pip's find-links) and pip's configuration are
left out (``--isolated``, no find-links). Nothing is installed. Two packages that ship the same
library (``nvidia-cudnn-cu12`` and ``nvidia-cudnn-cu13`` both hold ``libcudnn.so.9``;
``nvidia-cublas`` and ``nvidia-cublas-cu12``) mean two CUDA stacks in one process.

    python scripts/check_gpu_install.py [--jax cuda13] [--out benchmarks/results]

Prints the NVIDIA packages, writes ``gpu_install_<kind>_<date>.json`` to ``--out`` and exits
1 when a library comes twice, 2 when pip cannot resolve.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
INDEX = "https://pypi.org/simple"


def library(package: str) -> str | None:
    """The NVIDIA library a package ships, without its CUDA tag (``nvidia-cudnn-cu13`` ->
    ``cudnn``); None for other packages."""
    m = re.fullmatch(r"nvidia-(.+?)(-cu\d+)?", package.lower().replace("_", "-"))
    return m.group(1) if m else None


def duplicates(packages: dict[str, str]) -> dict[str, list[str]]:
    """Libraries that more than one of ``packages`` (name -> version) ship."""
    by_library: dict[str, list[str]] = {}
    for name in sorted(packages):
        lib = library(name)
        if lib is not None:
            by_library.setdefault(lib, []).append(name)
    return {lib: names for lib, names in by_library.items() if len(names) > 1}


def resolve(requirements: list[str]) -> dict[str, str]:
    """name -> version of everything pip would install for ``requirements`` from PyPI."""
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--quiet",
               "--ignore-installed", "--index-url", INDEX, "--report", str(report), *requirements]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pip could not resolve {requirements}:\n{done.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jax", default="cuda13", help="the jax extra (cuda13, cuda12, tpu)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    import jax

    torch_reqs = [line.split("#")[0].strip()
                  for line in (ROOT / "benchmarks" / "requirements-torch.txt").read_text().splitlines()]
    requirements = [f"jax[{args.jax}]=={jax.__version__}", *[r for r in torch_reqs if r]]
    packages = resolve(requirements)
    twice = duplicates(packages)
    nvidia = {k: v for k, v in sorted(packages.items()) if library(k) is not None}
    for name, version in nvidia.items():
        print(f"{name}=={version}")
    record = {"kind": "gpu_install", "jax_extra": args.jax, "requirements": requirements,
              "index": INDEX, "nvidia_packages": nvidia, "duplicated_libraries": twice,
              "consistent": not twice, "pip": subprocess.run(
                  [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split(" from")[0],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_install_{args.jax}_{datetime.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    if twice:
        print("two packages ship the same library: " + "; ".join(
            f"{lib}: {', '.join(names)}" for lib, names in twice.items()), file=sys.stderr)
    print(f"{'consistent' if not twice else 'NOT consistent'}: {len(nvidia)} NVIDIA packages ({path})")
    return 1 if twice else 0


if __name__ == "__main__":
    sys.exit(main())
