"""Builds kptrace.whatif._steps, the compiled request stepping of the what-if replay (steps.c),
with cffi.

setup.py names this builder (`cffi_modules`, beside the reader's and the timeline's), so
installing kptrace compiles it; `python kptrace/build_compiled.py` builds it in place in a source
checkout.
"""

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
