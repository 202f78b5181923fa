"""The one thing pyproject.toml cannot say with the setuptools we support: the relay's C extension.

`relay._mmsg` (recvmmsg/sendmmsg for the relay's UDP sockets and their steady-state relaying, relay/datagram.py;
relay/_mmsg.c and relay/_mmsg_relay.c) is built on Linux by
`pip install` (also editable); it needs a C compiler and the Python headers (Debian: gcc, python3-dev). It is
optional: where it cannot be built the relay runs its pure-Python back-end, slower but the same.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("relay._mmsg", ["relay/_mmsg.c", "relay/_mmsg_relay.c"], depends=["relay/_mmsg.h"],
                                 optional=True, extra_compile_args=["-O2"]))
# revproxy._http1: a node's response head parsed in C (revproxy/http1.py falls back to Python without it)
ext_modules.append(Extension("revproxy._http1", ["revproxy/_http1.c"], optional=True, extra_compile_args=["-O2"]))

setup(ext_modules=ext_modules)
