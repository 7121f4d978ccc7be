"""Only for the compiled parts: cffi builds kptrace.read._pages (kptrace/read/pages.c),
kptrace.export._packets (kptrace/export/packets.c) and kptrace.whatif._steps
(kptrace/whatif/steps.c) at install.
Everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["kptrace/read/pages_build.py:ffibuilder", "kptrace/export/packets_build.py:ffibuilder",
                    "kptrace/whatif/steps_build.py:ffibuilder"])
