"""Builds kptrace.export._packets, the compiled encoder of the timeline's event packets
(packets.c), with cffi.

setup.py names this builder (`cffi_modules`, beside kptrace/read/pages_build.py), so installing
kptrace compiles it; run this file directly to build it in place in a source checkout.
"""

import os
import shutil
import tempfile
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("""
int64_t encode_events(int64_t rows, const int64_t *ts, const int64_t *type, const uint64_t *uuid, const int64_t *iid,
                      const double *value, int64_t counter_type, const uint8_t *incomplete, int64_t annotations,
                      const int64_t *ann_value, const uint8_t *ann_present, const uint8_t *ann_names,
                      const int64_t *ann_name_at, const int64_t *flows_out_at, const uint64_t *flows_out,
                      const int64_t *flows_in_at, const uint64_t *flows_in, const uint8_t *flag, int64_t flag_size,
                      const uint8_t *seq_piece, int64_t seq_size, uint8_t *out);
""")
ffibuilder.set_source("kptrace.export._packets", (_HERE / "packets.c").read_text(), extra_compile_args=["-O2"])

if __name__ == "__main__":
    # Named as pip names it (cffi builds for the stable ABI), so a build here and an install never
    # leave two copies of which Python would load the other; moved over the old one, never
    # written into it, as a running process may have it mapped. The C and object files stay in a
    # scratch directory.
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(ffibuilder.compile(tmpdir=scratch))
        target = _HERE / "_packets.abi3.so"
        staged = target.with_name(f".{target.name}.new")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
        for stale in set(_HERE.glob("_packets.*.so")) - {target}:
            stale.unlink()
