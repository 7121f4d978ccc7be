"""Builds kptrace.whatif._steps, the compiled request stepping of the what-if replay (steps.c),
with cffi.

setup.py names this builder (`cffi_modules`, beside the reader's and the timeline's), so
installing kptrace compiles it; run this file directly to build it in place in a source checkout.
"""

import os
import shutil
import tempfile
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("""
void step_requests(int64_t n, const int64_t *ready, const int64_t *pre, const int64_t *wake, const int64_t *post,
                   const int64_t *demand, int64_t arrivals, const int64_t *stamps, const int64_t *span,
                   const int64_t *indirect, int64_t *starts, int64_t *ends, int64_t *taken_at, int64_t *state);
""")
ffibuilder.set_source("kptrace.whatif._steps", (_HERE / "steps.c").read_text(), extra_compile_args=["-O2"])

if __name__ == "__main__":
    # Named as pip names it (cffi builds for the stable ABI), so a build here and an install never
    # leave two copies of which Python would load the other; moved over the old one, never
    # written into it, as a running process may have it mapped. The C and object files stay in a
    # scratch directory.
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(ffibuilder.compile(tmpdir=scratch))
        target = _HERE / "_steps.abi3.so"
        staged = target.with_name(f".{target.name}.new")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
        for stale in set(_HERE.glob("_steps.*.so")) - {target}:
            stale.unlink()
