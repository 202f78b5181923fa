"""The one thing pyproject.toml cannot say with the setuptools we support: the relay's C extension.

`relay._mmsg` (recvmmsg/sendmmsg for the relay's UDP sockets, relay/datagram.py) is built on Linux by
`pip install` (also editable); it needs a C compiler and the Python headers (Debian: gcc, python3-dev). It is
optional: where it cannot be built the relay runs its pure-Python back-end, slower but the same.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("relay._mmsg", ["relay/_mmsg.c"], optional=True, extra_compile_args=["-O2"]))

setup(ext_modules=ext_modules)
