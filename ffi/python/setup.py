"""The one part of the build pyproject.toml cannot declare on setuptools
64: the optional ``_speedups`` extension (plain C, stable ABI), which makes
the wrapper's per-cycle calls without ctypes. ``optional=True``: without a
C compiler the package still installs and works, through ctypes."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "llmlb_lock._speedups",
            ["llmlb_lock/_speedups.c"],
            py_limited_api=True,
            optional=True,
        )
    ]
)
