"""Builds kptrace._resample, the compiled resampling of the attribution's bootstrap
(resample.c), with cffi.

setup.py names this builder (`cffi_modules`, beside the other compiled parts), so installing
kptrace compiles it; `python kptrace/build_compiled.py` builds it in place in a source checkout.
"""

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("void resampled_sums(int64_t n, const double *sample, int64_t replicates, uint64_t seed, "
                "double *sums);")
ffibuilder.set_source("kptrace._resample", (_HERE / "resample.c").read_text(), extra_compile_args=["-O2"])
