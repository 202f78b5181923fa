"""The one thing pyproject.toml cannot say with the setuptools we support: the two C extensions.

- `relay._mmsg` (Linux): recvmmsg/sendmmsg for the relay's UDP sockets and their steady-state relaying
  (relay/datagram.py; relay/_mmsg.c and relay/_mmsg_relay.c).
- `revproxy._http1`: a node's response head and a client's request head parsed in C (revproxy/http1.py).
Both are built by `pip install` (also editable) and need a C compiler and the Python headers (Debian: gcc,
python3-dev). Both are optional: where they cannot be built the services run their pure-Python code, slower but the
same.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("relay._mmsg", ["relay/_mmsg.c", "relay/_mmsg_relay.c"], depends=["relay/_mmsg.h"],
                                 optional=True, extra_compile_args=["-O2"]))
ext_modules.append(Extension("revproxy._http1", ["revproxy/_http1.c", "revproxy/_http1_request.c"],
                             depends=["revproxy/_http1.h"], optional=True, extra_compile_args=["-O2"]))

setup(ext_modules=ext_modules)
