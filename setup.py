"""Build the optional C speed-up; everything else is in pyproject.toml.

The extension is optional: if it cannot be compiled (no C compiler, PyPy) or
``TALKPIPE_ASYNC_NO_EXTENSIONS`` is set, talkpipe_async uses its pure-Python
twin (talkpipe_async/_core/_batch_items.py) with the same behaviour.
"""

import os
import platform

from setuptools import Extension, setup

extensions = []
if not os.environ.get("TALKPIPE_ASYNC_NO_EXTENSIONS") and platform.python_implementation() == "CPython":
    extensions.append(
        Extension(
            "talkpipe_async._core._speedups",
            ["talkpipe_async/_core/_speedups.c"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
