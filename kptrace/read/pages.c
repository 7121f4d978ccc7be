/* The loops of kptrace.read.pages that numpy cannot do in a few large array operations.
 *
 * walk_pages: within a page each record's header says where the next one starts, so the walk
 * is one sequential loop: compiled, a few milliseconds for a million records, where numpy needs
 * one vectorised pass per record slot. Arithmetic on times is unsigned, so a damaged page
 * wraps as the kernel's u64 would instead of being undefined behaviour.
 *
 * copy_spans, group_records: bytes from a million scattered offsets to others (each event
 * type's records side by side); one memcpy each, where numpy's fancy indexing copies item by
 * item through its iterator (and grouping by type would take a sort and three gathers).
 *
 * read_ints: integer fields of many records, all fields of a record at once; numpy needs a
 * gather per field.
 *
 * distinct_keys: which records hold the same bytes (a task name, a device, a whole record), by
 * hashing, one pass (a key equal to the record before's is not hashed); numpy can only sort
 * every value.
 *
 * small_codes: the same for integers in a small range (event ids, task ids), by a table indexed
 * by value: two passes, where numpy needs a scatter, a cumulative sum and a gather.
 *
 * walk_in_time_order: the walk of every CPU's pages side by side, the records written in time
 * order as they are found (each CPU's pages are in time order): numpy would need the walk's
 * arrays in page order, a sort of every time, then a gather per field.
 */
#include <stdint.h>
#include <string.h>

#define PADDING 29
#define TIME_EXTEND 30
#define TIME_STAMP 31
#define TS_SHIFT 27
#define DELTA_MASK ((1u << 27) - 1)
#define MAX_DATA_TYPE 28

static uint32_t word_at(const uint8_t *data, int64_t pos, int swap)
{
    uint32_t word;
    memcpy(&word, data + pos, 4);
    return swap ? __builtin_bswap32(word) : word;
}

/* The record whose header is at pos, on a page whose records end at `end`: its type_len
 * (returned), the time after it (*now, running from the page's time), where the next record
 * starts (*next) and how many bytes follow its header, up to the end (*body). */
static int64_t read_record(const uint8_t *data, int swap, int big, int64_t pos, int64_t end, uint64_t page_ts,
                           uint64_t *now, int64_t *next, int64_t *body)
{
    uint32_t word = word_at(data, pos, swap);
    int64_t array = word_at(data, pos + 4, swap);
    int64_t kind = big ? word >> TS_SHIFT : word & 31;
    uint64_t delta = big ? word & DELTA_MASK : word >> 5;
    if (kind == TIME_STAMP)  /* absolute: the page time's top 5 bits, then the 59 stored */
        *now = (page_ts & ~((UINT64_C(1) << 59) - 1)) | ((uint64_t)array << TS_SHIFT) | delta;
    else if (kind == TIME_EXTEND)  /* a delta too long for 27 bits: its high bits follow */
        *now += delta + ((uint64_t)array << TS_SHIFT);
    else
        *now += delta;
    if (kind >= TIME_EXTEND)
        *next = pos + 8;
    else if (kind == PADDING)
        *next = delta == 0 ? end : pos + 4 + array;
    else if (kind == 0)  /* a long record: its length in bytes, header word included, follows */
        *next = pos + 8 + ((array - 4 + 3) & ~INT64_C(3));
    else
        *next = pos + 4 + kind * 4;
    int64_t n = (*next < end ? *next : end) - pos - (kind == 0 ? 8 : 4);
    *body = n > 0 ? n : 0;
    return kind;
}

/* One page's records from `pos` to `end` (with `data_only`, only its data records, type_len at
 * most MAX_DATA_TYPE); with `offset` NULL only counts them, else writes each one's offset (of
 * its header, or with `data_only` of its data), running time, type_len, length (bytes after
 * the header, up to the commit end) and `page`. A length that does not move forward, or runs
 * to the commit end or past it, ends the page: a damaged page never loops. */
static int64_t page_records(const uint8_t *data, int swap, int big, int64_t pos, int64_t end, uint64_t page_ts,
                            int data_only, int64_t page, int64_t *offset, int64_t *ts, int8_t *type_len,
                            int32_t *length, int32_t *page_of)
{
    uint64_t now = page_ts;
    int64_t n = 0;
    for (;;) {
        int64_t next, body;
        int64_t kind = read_record(data, swap, big, pos, end, page_ts, &now, &next, &body);
        int keep = !data_only || kind <= MAX_DATA_TYPE;
        if (offset && keep) {
            offset[n] = data_only ? pos + (kind == 0 ? 8 : 4) : pos;
            ts[n] = (int64_t)now;
            type_len[n] = (int8_t)kind;
            length[n] = (int32_t)body;  /* within a page */
            page_of[n] = (int32_t)page;
        }
        n += keep;
        if (next <= pos || next >= end)
            return n;
        pos = next;
    }
}

/* Every record (with `data_only`, every data record) of every page, in page order (see
 * page_records); returns how many. With `offset` NULL only counts them; else writes at most
 * `capacity` of them and returns -1 when there are more (the caller counts, then walks again). */
int64_t walk_pages(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                   int64_t pages, const int64_t *size, const int64_t *page_ts, int data_only, int64_t capacity,
                   int64_t *offset, int64_t *ts, int8_t *type_len, int32_t *length, int32_t *page)
{
    int64_t total = 0;
    for (int64_t p = 0; p < pages; p++) {
        if (size[p] <= 0)
            continue;
        int64_t start = p * page_size + data_offset;
        if (offset == NULL) {
            total += page_records(data, swap, big, start, start + size[p], (uint64_t)page_ts[p], data_only, p,
                                  NULL, NULL, NULL, NULL, NULL);
            continue;
        }
        /* A page of `size` bytes holds at most size / 4 records: each takes 4 bytes or more. */
        if (total + size[p] / 4 + 1 > capacity &&
            total + page_records(data, swap, big, start, start + size[p], (uint64_t)page_ts[p], data_only, p,
                                 NULL, NULL, NULL, NULL, NULL) > capacity)
            return -1;
        total += page_records(data, swap, big, start, start + size[p], (uint64_t)page_ts[p], data_only, p,
                              offset + total, ts + total, type_len + total, length + total, page + total);
    }
    return total;
}

/* n bytes from data + from to dest, bytes outside data[0, size) as zeros (a damaged record's
 * offsets can point anywhere). */
static void copy_span(const uint8_t *data, int64_t size, int64_t from, int64_t n, uint8_t *dest)
{
    if (from >= 0 && n <= size - from) {
        memcpy(dest, data + from, (size_t)n);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        dest[j] = from + j >= 0 && from + j < size ? data[from + j] : 0;
}

/* length[i] bytes from data + from[i] to out + to[i], for each i. */
void copy_spans(const uint8_t *data, int64_t size, const int64_t *from, const int64_t *length, const int64_t *to,
                int64_t rows, uint8_t *out)
{
    for (int64_t i = 0; i < rows; i++)
        copy_span(data, size, from[i], length[i], out + to[i]);
}

/* Bytes after each type's records in group_records' output: a short record is copied as
 * GROUP_GAP bytes at once, the excess overwritten by the next record of its type or left in
 * the gap after the last. */
#define GROUP_GAP 64

/* How many records of each type there are (count[k]) and how many bytes they take (bytes[k]),
 * both zeroed by the caller: group_records' first pass. */
void count_groups(const int32_t *length, const uint32_t *kind, int64_t rows, int64_t *count, int64_t *bytes)
{
    for (int64_t i = 0; i < rows; i++) {
        count[kind[i]]++;
        bytes[kind[i]] += length[i];
    }
}

/* Records grouped by type, each type's in their own order (a counting sort): record i, of type
 * kind[i], takes the next slot of its type (slot[kind[i]]++), order[that slot] = i, and its
 * length[i] bytes go to out at the next byte of its type (byte[kind[i]], advanced by them),
 * start[that slot] saying where. The caller sets each type's first slot and byte. The records
 * are read in their own order, near-sequentially through the pages. */
void group_records(const uint8_t *data, int64_t size, const int64_t *pos, const int32_t *length,
                   const uint32_t *kind, int64_t rows, int64_t *slot, int64_t *byte, int64_t *order,
                   int64_t *start, uint8_t *out)
{
    for (int64_t i = 0; i < rows; i++) {
        uint32_t k = kind[i];
        int64_t s = slot[k]++, from = pos[i], n = length[i], to = byte[k];
        order[s] = i;
        start[s] = to;
        byte[k] = to + n;
        if (n <= GROUP_GAP && from >= 0 && from <= size - GROUP_GAP)
            memcpy(out + to, data + from, GROUP_GAP);  /* a constant size: a few moves, not a call */
        else
            copy_span(data, size, from, n, out + to);
    }
}

/* Where each grouped record goes in its family's table, in one pass over the records in their
 * own order: record i, of type kind[i], is in slot next_slot[kind[i]]++ of group_records' order
 * (the caller sets each type's first slot); when its type's family[kind[i]] is not NO_FAMILY, it
 * is row next_row[f]++ of family f's rows, row[that] = i (so each family's rows ascend), and
 * place[slot] = that row - first_row[f]. A sort of each family's rows would do the same. */
#define NO_FAMILY 255
void family_places(const uint32_t *kind, int64_t rows, int64_t *next_slot, const uint8_t *family,
                   const int64_t *first_row, int64_t *next_row, uint32_t *row, int64_t *place)
{
    for (int64_t i = 0; i < rows; i++) {
        uint32_t k = kind[i];
        int64_t s = next_slot[k]++;
        uint8_t f = family[k];
        if (f == NO_FAMILY)
            continue;
        int64_t r = next_row[f]++;
        row[r] = (uint32_t)i;
        place[s] = r - first_row[f];
    }
}

/* One field of records pos[0, rows) as int64 in value[0, rows): `width` bytes at offset
 * `offset`, sign-extended when `is_signed`, 0 when not wholly inside data[0, size). A loop per
 * width: the compiler keeps each one free of the choices made once per field. */
#define READ_FIELD(TYPE, UTYPE, SWAP)                                                  \
    for (int64_t i = 0; i < rows; i++) {                                               \
        int64_t at = pos[i] + offset;                                                  \
        UTYPE raw = 0;                                                                 \
        if (at >= 0 && at <= size - (int64_t)sizeof(UTYPE)) {                          \
            memcpy(&raw, data + at, sizeof(UTYPE));                                    \
            raw = swap ? SWAP(raw) : raw;                                              \
        }                                                                              \
        value[i] = is_signed ? (int64_t)(TYPE)raw : (int64_t)raw;                      \
    }
#define SAME(x) (x)

static void read_field(const uint8_t *data, int64_t size, int swap, const int64_t *pos, int64_t rows,
                       int64_t offset, int width, int is_signed, int64_t *value)
{
    switch (width) {
    case 1: READ_FIELD(int8_t, uint8_t, SAME) break;
    case 2: READ_FIELD(int16_t, uint16_t, __builtin_bswap16) break;
    case 4: READ_FIELD(int32_t, uint32_t, __builtin_bswap32) break;
    default: READ_FIELD(int64_t, uint64_t, __builtin_bswap64)
    }
}

/* value[0, rows) stored as integers of out_width bytes (cut as C casts cut) at `to`. */
#define STORE(TYPE) for (int64_t i = 0; i < rows; i++) { TYPE v = (TYPE)value[i]; memcpy(to + i * sizeof(TYPE), &v, sizeof(TYPE)); }

static void store_ints(const int64_t *value, int64_t rows, int out_width, uint8_t *to)
{
    switch (out_width) {
    case 1: STORE(int8_t) break;
    case 2: STORE(int16_t) break;
    case 4: STORE(int32_t) break;
    default: STORE(int64_t)
    }
}

/* Rows read per block in read_ints: their records' bytes stay in cache for all their fields. */
#define READ_BLOCK 256

/* Integer fields of the records at pos[0, rows): field f (offset[f] bytes into the record,
 * width[f] = 1, 2, 4 or 8 bytes, is_signed[f]) read as int64 (an unsigned 8-byte value wraps, as
 * C's would), then stored as an integer of out_width[f] bytes (cut as C casts cut) at
 * out + out_at[f] + i * out_width[f]. A field not wholly inside data[0, size) reads as 0.
 * Block by block of rows, field by field: each field's loop is chosen once per block, not per
 * record (~3x faster on the benchmark trace's common fields than a choice per record and field). */
void read_ints(const uint8_t *data, int64_t size, int swap, const int64_t *pos, int64_t rows,
               int64_t fields, const int64_t *offset, const int8_t *width, const int8_t *is_signed,
               const int8_t *out_width, const int64_t *out_at, uint8_t *out)
{
    int64_t value[READ_BLOCK];
    for (int64_t first = 0; first < rows; first += READ_BLOCK) {
        int64_t n = rows - first < READ_BLOCK ? rows - first : READ_BLOCK;
        for (int64_t f = 0; f < fields; f++) {
            read_field(data, size, swap, pos + first, n, offset[f], width[f], is_signed[f], value);
            store_ints(value, n, out_width[f], out + out_at[f] + first * out_width[f]);
        }
    }
}

/* The part of the span data[from, from + length) inside data[0, size), cut at its first NUL
 * when `cut`: its start in *at, its length returned. */
static int64_t inside(const uint8_t *data, int64_t size, int64_t from, int64_t length, int cut, const uint8_t **at)
{
    int64_t end = from + (length > 0 ? length : 0);  /* offsets and lengths are far below 2^62 */
    int64_t begin = from < 0 ? 0 : from > size ? size : from;
    int64_t n = (end > size ? size : end) - begin;
    n = n > 0 ? n : 0;
    *at = data + begin;
    if (cut) {
        const uint8_t *nul = memchr(*at, 0, (size_t)n);
        n = nul ? nul - *at : n;
    }
    return n;
}

/* The n bytes at p (0 < n < 8) as a word, the bytes after them zero, whatever the host's byte
 * order: one 8-byte load and a mask when the 8 bytes lie before `end`, not a copy of n bytes
 * (a call per key span). */
static uint64_t tail_word(const uint8_t *p, int64_t n, const uint8_t *end)
{
    static const uint8_t keep[16] = {255, 255, 255, 255, 255, 255, 255, 255};
    uint64_t word = 0, mask;
    if (end - p < 8) {
        memcpy(&word, p, (size_t)n);
        return word;
    }
    memcpy(&word, p, 8);
    memcpy(&mask, keep + 8 - n, 8);
    return word & mask;
}

/* The n bytes at a and at b are equal (each span lies before `end`): compared a word at a time,
 * inline, where a key of a few dozen bytes cost more in memcmp's call than in its compare. */
static int same_bytes(const uint8_t *a, const uint8_t *b, int64_t n, const uint8_t *end)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t wa, wb;
        memcpy(&wa, a + j, 8);
        memcpy(&wb, b + j, 8);
        if (wa != wb)
            return 0;
    }
    return j == n || tail_word(a + j, n - j, end) == tail_word(b + j, n - j, end);
}

/* A record's key, span by span: each span's stated length (so spans that run past the data
 * differ by how far) and the bytes of it inside the data, with `cut` the text up to a NUL;
 * hashed 8 bytes at a time (a multiply and a shift per word mix every bit into the low ones). */
static uint64_t key_hash(const uint8_t *data, int64_t size, const int64_t *start, const int64_t *length,
                         int64_t rows, int64_t spans, int cut, int64_t i)
{
    const uint64_t odd = 0x9E3779B97F4A7C15u;
    uint64_t hash = 0;
    for (int64_t k = 0; k < spans; k++) {
        const uint8_t *at;
        int64_t n = inside(data, size, start[k * rows + i], length[k * rows + i], cut, &at);
        hash = (hash ^ (uint64_t)(cut ? n : length[k * rows + i])) * odd;
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            uint64_t word;
            memcpy(&word, at + j, 8);  /* a constant size: one load */
            hash = (hash ^ word) * odd;
            hash ^= hash >> 32;
        }
        if (j < n) {
            hash = (hash ^ tail_word(at + j, n - j, data + size)) * odd;
            hash ^= hash >> 32;
        }
    }
    return hash ^ (hash >> 29);
}

static int same_key(const uint8_t *data, int64_t size, const int64_t *start, const int64_t *length,
                    int64_t rows, int64_t spans, int cut, int64_t a, int64_t b)
{
    for (int64_t k = 0; k < spans; k++) {
        const uint8_t *at_a, *at_b;
        int64_t na = inside(data, size, start[k * rows + a], length[k * rows + a], cut, &at_a);
        int64_t nb = inside(data, size, start[k * rows + b], length[k * rows + b], cut, &at_b);
        if (na != nb || (!cut && length[k * rows + a] != length[k * rows + b]) ||
            !same_bytes(at_a, at_b, na, data + size))
            return 0;
    }
    return 1;
}

/* Records 0..rows-1 each have a key of `spans` byte spans (span k of record i: start and length
 * at [k * rows + i]; see key_hash). Numbers the distinct keys in order of first appearance:
 * code[i] is record i's, first[d] the first record with key d; returns how many there are.
 * slot (slots entries, a power of two above rows, zeroed) and hash (rows entries) are scratch. */
int64_t distinct_keys(const uint8_t *data, int64_t size, const int64_t *start, const int64_t *length,
                      int64_t rows, int64_t spans, int cut, uint32_t *code, int64_t *first,
                      uint32_t *slot, int64_t slots, uint64_t *hash)
{
    int64_t distinct = 0;
    for (int64_t i = 0; i < rows; i++) {
        if (i > 0 && same_key(data, size, start, length, rows, spans, cut, i - 1, i)) {
            code[i] = code[i - 1];  /* as the record before: neither hashed nor looked up */
            continue;
        }
        uint64_t h = key_hash(data, size, start, length, rows, spans, cut, i);
        for (int64_t s = (int64_t)(h & (uint64_t)(slots - 1));; s = (s + 1) & (slots - 1)) {
            uint32_t d = slot[s];  /* 0: empty, else distinct key d - 1 */
            if (d == 0) {
                slot[s] = (uint32_t)(distinct + 1);
                hash[distinct] = h;
                first[distinct] = i;
                code[i] = (uint32_t)distinct++;
                break;
            }
            if (hash[d - 1] == h && same_key(data, size, start, length, rows, spans, cut, first[d - 1], i)) {
                code[i] = d - 1;
                break;
            }
        }
    }
    return distinct;
}

/* Integers values[0, rows) (int32 when `width` is 4, else int64), each in [low, low + range):
 * numbers the distinct values in ascending order, code[i] being values[i]'s. table (range
 * entries, zeroed) is left holding 1 + the number of each value present, 0 for the others;
 * returns how many values are distinct. */
int64_t small_codes(const void *values, int width, int64_t rows, int64_t low, uint32_t *table, int64_t range,
                    uint32_t *code)
{
    const int32_t *narrow = values;
    const int64_t *wide = values;
    for (int64_t i = 0; i < rows; i++)
        table[(width == 4 ? narrow[i] : wide[i]) - low] = 1;
    uint32_t distinct = 0;
    for (int64_t r = 0; r < range; r++)
        if (table[r])
            table[r] = ++distinct;
    for (int64_t i = 0; i < rows; i++)
        code[i] = table[(width == 4 ? narrow[i] : wide[i]) - low] - 1;
    return distinct;
}

/* The walk of one run of pages in walk_in_time_order: pages page..last-1, at `pos` on the
 * current page (which ends at `end`; -1: at the start of the next page), and the run's next
 * data record (its time ts, data offset at, length and page at_page) once found. */
struct walker {
    int64_t ts, at, length, at_page, page, last, pos, end;
    uint64_t now;
};

/* Moves w on to its run's next data record, as page_records finds them; 0 when it has none. */
static int next_data_record(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                            const int64_t *size, const int64_t *page_ts, struct walker *w)
{
    for (;;) {
        if (w->pos < 0) {
            while (w->page < w->last && size[w->page] <= 0)
                w->page++;
            if (w->page >= w->last)
                return 0;
            w->pos = w->page * page_size + data_offset;
            w->end = w->pos + size[w->page];
            w->now = (uint64_t)page_ts[w->page];
        }
        int64_t pos = w->pos, page = w->page, next, body;
        int64_t kind = read_record(data, swap, big, pos, w->end, (uint64_t)page_ts[page], &w->now, &next, &body);
        if (next <= pos || next >= w->end) {
            w->pos = -1;
            w->page++;
        } else {
            w->pos = next;
        }
        if (kind <= MAX_DATA_TYPE) {
            w->ts = (int64_t)w->now;
            w->at = pos + (kind == 0 ? 8 : 4);
            w->length = body;
            w->at_page = page;
            return 1;
        }
    }
}

/* Run a's next record comes before run b's: earlier, or as early and from an earlier run. */
static int comes_first(const struct walker *w, int64_t a, int64_t b)
{
    return w[a].ts < w[b].ts || (w[a].ts == w[b].ts && a < b);
}

/* Moves heap[i] down the binary heap of n runs until neither child comes first. */
static void sift_down(const struct walker *w, int64_t *heap, int64_t n, int64_t i)
{
    for (;;) {
        int64_t first = i, child = 2 * i + 1;
        if (child < n && comes_first(w, heap[child], heap[first]))
            first = child;
        if (child + 1 < n && comes_first(w, heap[child + 1], heap[first]))
            first = child + 1;
        if (first == i)
            return;
        int64_t run = heap[i];
        heap[i] = heap[first];
        heap[first] = run;
        i = first;
    }
}

/* The data records of the pages, as walk_pages finds them, in the order of a stable sort on
 * time, in one pass: `runs` runs of pages (run r: pages start[r]..start[r+1]-1, a CPU's, in
 * time order) are walked side by side, the earliest next record taken each time (on a tie, the
 * earlier run's, so records of equal time keep their page order). Writes each one's time,
 * data offset, length and page; returns how many, -1 when more than `capacity`, -2 when a
 * run's time steps back (the caller then walks in page order and sorts). walkers (runs
 * entries) and heap (runs entries) are scratch. */
int64_t walk_in_time_order(const uint8_t *data, int swap, int big, int64_t page_size, int64_t data_offset,
                           const int64_t *size, const int64_t *page_ts, const int64_t *start, int64_t runs,
                           int64_t capacity, void *walkers, int64_t *heap, int64_t *restrict ts,
                           int64_t *restrict offset, int32_t *restrict length, int32_t *restrict page)
{
    struct walker *w = walkers;
    int64_t live = 0, n = 0;
    for (int64_t r = 0; r < runs; r++) {
        w[r] = (struct walker){.page = start[r], .last = start[r + 1], .pos = -1};
        if (next_data_record(data, swap, big, page_size, data_offset, size, page_ts, &w[r]))
            heap[live++] = r;
    }
    for (int64_t i = live / 2 - 1; i >= 0; i--)
        sift_down(w, heap, live, i);
    while (live > 0) {
        struct walker *top = &w[heap[0]];
        if (n >= capacity)
            return -1;
        ts[n] = top->ts;
        offset[n] = top->at;
        length[n] = (int32_t)top->length;
        page[n] = (int32_t)top->at_page;
        n++;
        int64_t before = top->ts;
        if (!next_data_record(data, swap, big, page_size, data_offset, size, page_ts, top))
            heap[0] = heap[--live];
        else if (top->ts < before)
            return -2;
        sift_down(w, heap, live, 0);
    }
    return n;
}
