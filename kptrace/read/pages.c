/* The two loops of kptrace.read.pages that numpy cannot do in a few large array operations.
 *
 * walk_pages: within a page each record's header says where the next one starts, so the walk
 * is one sequential loop: compiled, a few milliseconds for a million records, where numpy needs
 * one vectorised pass per record slot. Arithmetic on times is unsigned, so a damaged page
 * wraps as the kernel's u64 would instead of being undefined behaviour.
 *
 * gather_rows: the same number of bytes from each of a million scattered offsets, side by
 * side; one memcpy each, where numpy's fancy indexing copies item by item through its iterator.
 */
#include <stdint.h>
#include <string.h>

#define PADDING 29
#define TIME_EXTEND 30
#define TIME_STAMP 31
#define TS_SHIFT 27
#define DELTA_MASK ((1u << 27) - 1)

static uint32_t word_at(const uint8_t *data, int64_t pos, int swap)
{
    uint32_t word;
    memcpy(&word, data + pos, 4);
    return swap ? __builtin_bswap32(word) : word;
}

/* One page's records from `pos` to `end`; with `offset` NULL only counts them, else writes
 * each one's header offset, running time and type_len. A length that does not move forward,
 * or runs to the commit end or past it, ends the page: a damaged page never loops. */
static int64_t page_records(const uint8_t *data, int swap, int big, int64_t pos, int64_t end, uint64_t page_ts,
                            int64_t *offset, int64_t *ts, int8_t *type_len)
{
    uint64_t now = page_ts;
    int64_t n = 0;
    for (;;) {
        uint32_t word = word_at(data, pos, swap);
        int64_t array = word_at(data, pos + 4, swap);
        int64_t kind = big ? word >> TS_SHIFT : word & 31;
        uint64_t delta = big ? word & DELTA_MASK : word >> 5;
        if (offset) {
            if (kind == TIME_STAMP)  /* absolute: the page time's top 5 bits, then the 59 stored */
                now = (page_ts & ~((UINT64_C(1) << 59) - 1)) | ((uint64_t)array << TS_SHIFT) | delta;
            else if (kind == TIME_EXTEND)  /* a delta too long for 27 bits: its high bits follow */
                now += delta + ((uint64_t)array << TS_SHIFT);
            else
                now += delta;
            offset[n] = pos;
            ts[n] = (int64_t)now;
            type_len[n] = (int8_t)kind;
        }
        n++;
        int64_t next;
        if (kind >= TIME_EXTEND)
            next = pos + 8;
        else if (kind == PADDING)
            next = delta == 0 ? end : pos + 4 + array;
        else if (kind == 0)  /* a long record: its length in bytes, header word included, follows */
            next = pos + 8 + ((array - 4 + 3) & ~INT64_C(3));
        else
            next = pos + 4 + kind * 4;
        if (next <= pos || next >= end)
            return n;
        pos = next;
    }
}

/* Every record of every page, in page order (see page_records); returns how many. */
int64_t walk_pages(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                   int64_t pages, const int64_t *size, const int64_t *page_ts,
                   int64_t *offset, int64_t *ts, int8_t *type_len)
{
    int64_t total = 0;
    for (int64_t p = 0; p < pages; p++) {
        if (size[p] <= 0)
            continue;
        int64_t start = p * page_size + data_offset;
        total += page_records(data, swap, big, start, start + size[p], (uint64_t)page_ts[p],
                              offset ? offset + total : NULL, offset ? ts + total : NULL,
                              offset ? type_len + total : NULL);
    }
    return total;
}

/* `width` bytes from each offset in `start` to consecutive rows of `out`, bytes outside
 * data[0, size) as zeros (a damaged record's offsets can point anywhere). */
void gather_rows(const uint8_t *data, int64_t size, const int64_t *start, int64_t rows, int64_t width,
                 uint8_t *out)
{
    for (int64_t i = 0; i < rows; i++, out += width) {
        int64_t from = start[i];
        if (from >= 0 && width <= size - from) {
            memcpy(out, data + from, width);
            continue;
        }
        for (int64_t j = 0; j < width; j++)
            out[j] = from + j >= 0 && from + j < size ? data[from + j] : 0;
    }
}
