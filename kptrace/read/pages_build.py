"""Builds kptrace.read._pages, the compiled loops of the page reader (pages.c), with cffi.

setup.py names this builder (`cffi_modules`), so installing kptrace compiles it; run this file
directly to build it in place in a source checkout.
"""

import shutil
import tempfile
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("""
int64_t walk_pages(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                   int64_t pages, const int64_t *size, const int64_t *page_ts,
                   int64_t *offset, int64_t *ts, int8_t *type_len);
void gather_rows(const uint8_t *data, int64_t size, const int64_t *start, int64_t rows, int64_t width,
                 uint8_t *out);
""")
ffibuilder.set_source("kptrace.read._pages", (_HERE / "pages.c").read_text(), extra_compile_args=["-O2"])

if __name__ == "__main__":  # the module next to this file; the C and object files in a scratch directory
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(ffibuilder.compile(tmpdir=scratch))
        shutil.copy(built, _HERE / built.name)
