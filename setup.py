"""Only for the compiled parts: cffi builds kptrace.read._pages (kptrace/read/pages.c),
kptrace.export._packets (kptrace/export/packets.c), kptrace.whatif._steps
(kptrace/whatif/steps.c) and kptrace._resample (kptrace/resample.c) at install.
Everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["kptrace/read/pages_build.py:ffibuilder", "kptrace/export/packets_build.py:ffibuilder",
                    "kptrace/whatif/steps_build.py:ffibuilder", "kptrace/resample_build.py:ffibuilder"])
