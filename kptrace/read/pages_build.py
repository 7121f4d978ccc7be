"""Builds kptrace.read._pages, the compiled loops of the page reader (pages.c), with cffi.

setup.py names this builder (`cffi_modules`), so installing kptrace compiles it;
`python kptrace/build_compiled.py` builds it in place in a source checkout.
"""

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("""
int64_t walk_pages(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                   int64_t pages, const int64_t *size, const int64_t *page_ts, int data_only, int64_t capacity,
                   int64_t *offset, int64_t *ts, int8_t *type_len, int32_t *length, int32_t *page);
void copy_spans(const uint8_t *data, int64_t size, const int64_t *from, const int64_t *length, const int64_t *to,
                int64_t rows, uint8_t *out);
void count_groups(const int32_t *length, const uint32_t *kind, int64_t rows, int64_t *count, int64_t *bytes);
void group_records(const uint8_t *data, int64_t size, const int64_t *pos, const int32_t *length,
                   const uint32_t *kind, int64_t rows, int64_t *slot, int64_t *byte, int64_t *order,
                   int64_t *start, uint8_t *out);
void family_places(const uint32_t *kind, int64_t rows, int64_t *next_slot, const uint8_t *family,
                   const int64_t *first_row, int64_t *next_row, uint32_t *row, int64_t *place);
void read_ints(const uint8_t *data, int64_t size, int swap, const int64_t *pos, int64_t rows,
               int64_t fields, const int64_t *offset, const int8_t *width, const int8_t *is_signed,
               const int8_t *out_width, const int64_t *out_at, uint8_t *out);
int64_t distinct_keys(const uint8_t *data, int64_t size, const int64_t *start, const int64_t *length,
                      int64_t rows, int64_t spans, int cut, uint32_t *code, int64_t *first,
                      uint32_t *slot, int64_t slots, uint64_t *hash);
int64_t small_codes(const void *values, int width, int64_t rows, int64_t low, uint32_t *table, int64_t range,
                    uint32_t *code);
struct walker { ...; };
int64_t walk_in_time_order(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                           const int64_t *size, const int64_t *page_ts, const int64_t *start, int64_t runs,
                           int64_t capacity, void *walkers, int64_t *heap, int64_t *ts, int64_t *offset,
                           int32_t *length, int32_t *page);
""")
ffibuilder.set_source("kptrace.read._pages", (_HERE / "pages.c").read_text(), extra_compile_args=["-O2"])
