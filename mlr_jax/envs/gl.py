"""Load an OpenGL platform library before the first MuJoCo render.

Envpool's MuJoCo renderer uses whichever OpenGL platform library is loaded into the
process with global symbols (``libEGL`` or ``libOSMesa``); when none is, the first render
prints "an OpenGL platform library has not been loaded into this process" and EXITS the
process, which Python cannot catch. So :func:`ensure_gl` first renders one tiny frame in a
child process with the candidate library, and only loads a library that rendered there
into this process (``RTLD_GLOBAL``), then sets ``MUJOCO_GL`` to match.

EGL: envpool's wheel bundles its own glvnd ``libEGL`` (``envpool.libs/libEGL-*.so*``,
linked by its MuJoCo modules and loaded by ``import envpool``). Loading the system
``libEGL.so.1`` next to it makes the first render fail with "gladLoadGL error", so the
bundled copy is the one promoted to ``RTLD_GLOBAL`` when it exists (the system
``libEGL.so.1`` otherwise). Either way it dispatches to the system's EGL vendor library
(Mesa: ``libegl1`` + ``libgl1-mesa-dri``; or the NVIDIA driver).

``MUJOCO_GL`` is respected when set (``egl`` or ``osmesa``); otherwise EGL is tried first,
then OSMesa. When nothing works, one :class:`RuntimeError` names the Debian packages to
install.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import subprocess
import sys

LIBRARIES: dict[str, str] = {"egl": "libEGL.so.1", "osmesa": "libOSMesa.so.8"}
PACKAGES: dict[str, str] = {"egl": "libegl1 libgl1-mesa-dri", "osmesa": "libosmesa6"}

# Child-process check: load the library, render one 8x8 frame of a small task.
_PROBE = """
import ctypes, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import envpool, numpy as np
pool = envpool.make_gymnasium("CartpoleBalance-v1", num_envs=1, render_mode="rgb_array",
                              render_width=8, render_height=8, render_camera_id=0)
pool.reset()
assert pool.render(env_ids=np.zeros(1, np.int32)).shape == (1, 8, 8, 3)
"""

_platform: str | None = None


def library_path(platform: str) -> str:
    """The library to load for ``platform``: envpool's bundled libEGL for ``"egl"`` when the
    installed wheel has one, else the system library ``LIBRARIES[platform]``."""
    if platform == "egl":
        spec = importlib.util.find_spec("envpool")
        for location in (spec.submodule_search_locations or []) if spec else []:
            bundled = sorted(glob.glob(os.path.join(f"{location}.libs", "libEGL-*.so*")))
            if bundled:
                return bundled[0]
    return LIBRARIES[platform]


def _probe(library: str, platform: str) -> str | None:
    """None if ``library`` renders in a child process, else the reason it does not."""
    env = dict(os.environ, MUJOCO_GL=platform)
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE, library], env=env,
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "a test render did not finish in 300 s"
    if result.returncode == 0:
        return None
    lines = (result.stderr + result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _load_library(name: str) -> None:
    ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)


def ensure_gl() -> str:
    """Make MuJoCo rendering work in this process; return the platform (``egl``/``osmesa``).

    Idempotent: later calls return the platform chosen by the first successful one.

    Raises:
      RuntimeError: ``MUJOCO_GL`` names an unsupported platform, or no candidate platform
        can render; the message says which packages to install.
    """
    global _platform
    if _platform is not None:
        return _platform
    requested = os.environ.get("MUJOCO_GL", "").strip().lower()
    if requested and requested not in LIBRARIES:
        raise RuntimeError(f"MUJOCO_GL={requested!r} is not supported for rendering DMC "
                           f"pixels; set it to one of {sorted(LIBRARIES)} or unset it")
    candidates = [requested] if requested else list(LIBRARIES)
    failures = []
    for platform in candidates:
        library = library_path(platform)
        reason = _probe(library, platform)
        if reason is None:
            try:
                _load_library(library)
            except OSError as e:
                reason = str(e)
        if reason is None:
            os.environ["MUJOCO_GL"] = platform
            _platform = platform
            return platform
        failures.append(f"{platform} ({library}): {reason}")
    install = " or ".join(f"`apt-get install {PACKAGES[p]}`" for p in candidates)
    raise RuntimeError(
        "cannot render DMC pixels: no OpenGL platform library could be loaded ("
        + "; ".join(failures) + f"). Install {install}"
        + (", or unset MUJOCO_GL to try every platform." if requested else "."))
