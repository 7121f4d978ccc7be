"""Builds kptrace.export._packets, the compiled encoder of the timeline's event packets
(packets.c), with cffi.

setup.py names this builder (`cffi_modules`, beside kptrace/read/pages_build.py), so installing
kptrace compiles it; `python kptrace/build_compiled.py` builds it in place in a source checkout.
"""

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
