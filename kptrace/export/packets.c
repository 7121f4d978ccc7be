/* The timeline's event packets (kptrace.export.perfetto), encoded in one pass over their columns.
 *
 * Each packet is a few varints and fixed-width fields nested two deep (Trace.packet ->
 * TracePacket -> TrackEvent), so its bytes depend on the lengths of its own fields: numpy needed
 * one pass per field and a scatter per piece to place them (0.6 s for the benchmark trace's 1 M
 * packets), where one loop per packet measures and writes them in a few nanoseconds each.
 *
 * Fields are written in field-number order, as the protobuf classes serialize them (the tests
 * compare the two byte for byte): TracePacket timestamp (8), trusted_packet_sequence_id (10),
 * track_event (11) { debug_annotations (4)..., type (9), name_iid (10), track_uuid (11),
 * double_counter_value (44), flow_ids (47)..., terminating_flow_ids (48)... },
 * sequence_flags (13) = SEQ_NEEDS_INCREMENTAL_STATE.
 */
#include <stdint.h>
#include <string.h>

static int64_t varint_size(uint64_t value)
{
    int64_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
}

static uint8_t *put_varint(uint8_t *out, uint64_t value)
{
    while (value >= 0x80) {
        *out++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *out++ = (uint8_t)value;
    return out;
}

static uint8_t *put_fixed64(uint8_t *out, const uint8_t tag[2], const void *value)
{
    out[0] = tag[0];
    out[1] = tag[1];
    memcpy(out + 2, value, 8); /* little endian, as the protobuf wire format */
    return out + 10;
}

/* Bytes of one integer debug annotation { int_value (4), then the name piece (field 10) }. */
static int64_t annotation_body(uint64_t value, int64_t name_size)
{
    return 1 + varint_size(value) + name_size;
}

static int64_t event_size(int64_t i, int64_t rows, const int64_t *type, const uint64_t *uuid, const int64_t *iid,
                          int64_t counter_type, const uint8_t *incomplete, int64_t annotations,
                          const int64_t *ann_value, const uint8_t *ann_present, const int64_t *ann_name_at,
                          const int64_t *flows_out_at, const int64_t *flows_in_at, int64_t flag_size)
{
    int64_t size = 0;
    for (int64_t a = 0; a < annotations; a++) {
        if (ann_present[a * rows + i]) {
            int64_t body = annotation_body((uint64_t)ann_value[a * rows + i], ann_name_at[a + 1] - ann_name_at[a]);
            size += 1 + varint_size((uint64_t)body) + body;
        }
    }
    if (incomplete && incomplete[i])
        size += flag_size;
    size += 1 + varint_size((uint64_t)type[i]);
    if (iid[i] >= 0)
        size += 1 + varint_size((uint64_t)iid[i]);
    size += 1 + varint_size(uuid[i]);
    if (type[i] == counter_type)
        size += 10;
    if (flows_out_at)
        size += 10 * (flows_out_at[i + 1] - flows_out_at[i]);
    if (flows_in_at)
        size += 10 * (flows_in_at[i + 1] - flows_in_at[i]);
    return size;
}

/* Framed packets of rows [0, rows) into `out` (room enough: the caller bounds it); returns the
 * bytes written. iid < 0: no name. value: read for rows of `counter_type` only. incomplete,
 * flows_*_at: NULL when the frame has no such column; flows_*_at[i]..[i + 1] index the row's ids.
 * ann_value and ann_present: `annotations` columns of `rows`, one after another; ann_names: each
 * annotation's name piece (tag, length, name) at ann_name_at[a]..[a + 1]. flag: the whole
 * "incomplete: true" annotation. seq_piece: sequence id's tag and varint, then track_event's tag. */
int64_t encode_events(int64_t rows, const int64_t *ts, const int64_t *type, const uint64_t *uuid, const int64_t *iid,
                      const double *value, int64_t counter_type, const uint8_t *incomplete, int64_t annotations,
                      const int64_t *ann_value, const uint8_t *ann_present, const uint8_t *ann_names,
                      const int64_t *ann_name_at, const int64_t *flows_out_at, const uint64_t *flows_out,
                      const int64_t *flows_in_at, const uint64_t *flows_in, const uint8_t *flag, int64_t flag_size,
                      const uint8_t *seq_piece, int64_t seq_size, uint8_t *out)
{
    static const uint8_t counter_tag[2] = {0xe1, 0x02}, out_tag[2] = {0xf9, 0x02}, in_tag[2] = {0x81, 0x03};
    uint8_t *start = out;
    for (int64_t i = 0; i < rows; i++) {
        int64_t event = event_size(i, rows, type, uuid, iid, counter_type, incomplete, annotations, ann_value,
                                   ann_present, ann_name_at, flows_out_at, flows_in_at, flag_size);
        int64_t packet = 1 + varint_size((uint64_t)ts[i]) + seq_size + varint_size((uint64_t)event) + event + 2;
        *out++ = 0x0a; /* Trace.packet */
        out = put_varint(out, (uint64_t)packet);
        *out++ = 0x40;
        out = put_varint(out, (uint64_t)ts[i]);
        memcpy(out, seq_piece, seq_size);
        out += seq_size;
        out = put_varint(out, (uint64_t)event);
        for (int64_t a = 0; a < annotations; a++) {
            if (!ann_present[a * rows + i])
                continue;
            uint64_t v = (uint64_t)ann_value[a * rows + i];
            int64_t name_size = ann_name_at[a + 1] - ann_name_at[a];
            *out++ = 0x22;
            out = put_varint(out, (uint64_t)annotation_body(v, name_size));
            *out++ = 0x20;
            out = put_varint(out, v);
            memcpy(out, ann_names + ann_name_at[a], name_size);
            out += name_size;
        }
        if (incomplete && incomplete[i]) {
            memcpy(out, flag, flag_size);
            out += flag_size;
        }
        *out++ = 0x48;
        out = put_varint(out, (uint64_t)type[i]);
        if (iid[i] >= 0) {
            *out++ = 0x50;
            out = put_varint(out, (uint64_t)iid[i]);
        }
        *out++ = 0x58;
        out = put_varint(out, uuid[i]);
        if (type[i] == counter_type)
            out = put_fixed64(out, counter_tag, &value[i]);
        for (int64_t f = flows_out_at ? flows_out_at[i] : 0; flows_out_at && f < flows_out_at[i + 1]; f++)
            out = put_fixed64(out, out_tag, &flows_out[f]);
        for (int64_t f = flows_in_at ? flows_in_at[i] : 0; flows_in_at && f < flows_in_at[i + 1]; f++)
            out = put_fixed64(out, in_tag, &flows_in[f]);
        *out++ = 0x68; /* sequence_flags */
        *out++ = 0x02;
    }
    return out - start;
}
