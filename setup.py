"""Only for the compiled part: cffi builds kptrace.read._pages (kptrace/read/pages.c) at install.
Everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["kptrace/read/pages_build.py:ffibuilder"])
