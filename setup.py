"""Builds espcn_jax's optional oneDNN convolutions; everything else is in setup.cfg.

``espcn_jax/onednn/conv.cc`` (XLA FFI handlers for oneDNN's convolution primitives) is compiled
with g++ into ``espcn_jax/onednn/libespcn_onednn.so`` against the ``onednn-devel-cpu-gomp``
headers, the ``onednn-cpu-gomp`` library and jaxlib's FFI headers (pyproject.toml's build
requirements). It is optional: if anything is missing or the compiler fails, the install still
succeeds with a warning, and at run time ``espcn_jax.cpu_conv`` logs one line and the
convolutions run as plain ``lax``. ``ESPCN_JAX_SKIP_ONEDNN_BUILD=1`` skips the build; ``CXX``
picks the compiler.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "espcn_jax.onednn.libespcn_onednn"
SOURCE = os.path.join("espcn_jax", "onednn", "conv.cc")


def _dist_file(dist: str, name: str) -> str:
    """The installed file ``name`` of distribution ``dist`` (from its RECORD)."""
    for f in importlib.metadata.files(dist) or []:
        if f.name == name:
            return str(f.locate())
    raise FileNotFoundError(f"{name} not in the installed {dist}")


def _compile_command(out: str) -> list[str]:
    dnnl_include = os.path.dirname(_dist_file("onednn-devel-cpu-gomp", "dnnl.hpp"))
    libdnnl = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
    jaxlib = importlib.util.find_spec("jaxlib")
    if jaxlib is None or not jaxlib.submodule_search_locations:
        raise FileNotFoundError("jaxlib (for the XLA FFI headers) is not installed")
    ffi_include = os.path.join(list(jaxlib.submodule_search_locations)[0], "include")
    if not os.path.exists(os.path.join(ffi_include, "xla", "ffi", "api", "ffi.h")):
        raise FileNotFoundError(f"no xla/ffi/api/ffi.h under {ffi_include}")
    return [
        *shlex.split(os.environ.get("CXX", "g++")),
        "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
        f"-I{dnnl_include}", f"-I{ffi_include}",
        os.path.join(ROOT, SOURCE), libdnnl,
        # libdnnl.so.3 next to the venv's lib/ for a regular install; espcn_jax.cpu_conv also
        # preloads it from the onednn-cpu-gomp distribution, which covers editable installs
        "-Wl,-rpath,$ORIGIN/../../../..",
        "-o", out,
    ]  # fmt: skip


class BuildOnednn(build_ext):
    """Compiles the oneDNN FFI library with g++; a failure is a warning, not an error."""

    built: list[str]

    def run(self) -> None:
        self.built = []
        relative = os.path.join(*EXT_NAME.split(".")) + ".so"
        base = ROOT if (self.inplace or self.editable_mode) else self.build_lib
        out = os.path.join(base, relative)
        if os.environ.get("ESPCN_JAX_SKIP_ONEDNN_BUILD", "") not in ("", "0"):
            return self._skip("ESPCN_JAX_SKIP_ONEDNN_BUILD is set")
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
            return self._skip(
                f"only built on Linux x86_64, not {sys.platform} {platform.machine()}"
            )
        try:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            partial = f"{out}.{os.getpid()}.tmp"  # then renamed: a loaded copy is never rewritten
            cmd = _compile_command(partial)
            print("building the oneDNN convolutions:", shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True, timeout=600)
            os.replace(partial, out)
        except (
            OSError,
            subprocess.SubprocessError,
            importlib.metadata.PackageNotFoundError,
        ) as err:
            if os.path.exists(f"{out}.{os.getpid()}.tmp"):
                os.remove(f"{out}.{os.getpid()}.tmp")
            return self._skip(str(err))
        self.built = [out]
        if base != ROOT and self.inplace:
            self.copy_file(out, os.path.join(ROOT, relative))

    def _skip(self, why: str) -> None:
        print(
            f"WARNING: espcn_jax's oneDNN convolutions were not built ({why}); "
            "the install goes on and convolutions run as plain lax.",
            file=sys.stderr,
            flush=True,
        )

    def get_outputs(self) -> list[str]:
        return list(getattr(self, "built", []))

    def get_output_mapping(self) -> dict[str, str]:
        return {}


setup(
    ext_modules=[Extension(EXT_NAME, sources=[SOURCE], optional=True)],
    cmdclass={"build_ext": BuildOnednn},
)
