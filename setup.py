"""mlr-jax: Mask-based Latent Reconstruction for RL in JAX/Flax."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
CORE, _, TESTS = (HERE / "requirements.txt").read_text().partition("\n# tests")


def _requirements(text: str) -> list[str]:
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


REQUIREMENTS = _requirements(CORE)
TEST_REQUIREMENTS = _requirements(TESTS.partition("\n")[2])

setup(
    name="mlr-jax",
    version="0.3.0",
    description="JAX/Flax reimplementation of Mask-based Latent Reconstruction (MLR, NeurIPS 2022)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mlr_jax", "mlr_jax.*"]),
    package_data={"mlr_jax": ["data/*.json"]},
    install_requires=REQUIREMENTS,
    extras_require={"bench": ["torch==2.13.0"], "track": ["wandb>=0.31"], "test": TEST_REQUIREMENTS},
    entry_points={"console_scripts": ["mlr-jax=mlr_jax.cli:main"]},
)
