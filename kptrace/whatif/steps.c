/* The what-if replay's hot loop (kptrace/whatif/replay.py): one core's requests stepped through
 * the interrupts that arrive on it, by the walker's rules (kptrace/walker.py, a CoreWalker with
 * no mask and no NIC queue). Every piece of work is stepped as the walker steps it, in integer
 * ns, so the results equal the Python walker's exactly (tests/test_whatif_replay.py checks). */
#include <stdint.h>

/* The walker's state: the arrivals are in time order and taken from `next` on. */
struct walker {
    int64_t now, busy, idle, irq, next;
    int64_t arrivals;
    const int64_t *stamps, *span, *indirect;
    int64_t *taken_at;  /* when each arrival was taken, or NULL: not kept */
};

static int64_t later(int64_t a, int64_t b) { return a > b ? a : b; }

/* Take the next arrival: at its time, or when the CPU is free of the one before. */
static int64_t take_next(struct walker *w)
{
    int64_t i = w->next++;
    int64_t at = later(w->stamps[i], w->now);
    if (w->taken_at)
        w->taken_at[i] = at;
    w->now = at + w->span[i];
    return i;
}

/* CoreWalker.work: `ns` of the thread's work, stretched by each arrival that lands in it (its
 * span, and in a request its indirect cost too). */
static void work(struct walker *w, int64_t ns, int in_request)
{
    int64_t start = w->now, finish = start + ns;
    while (w->next < w->arrivals && w->stamps[w->next] < finish) {
        int64_t i = take_next(w);
        w->irq += w->span[i];
        finish += w->span[i] + (in_request ? w->indirect[i] : 0);
    }
    w->busy += finish - start;
    w->now = finish;
}

/* CoreWalker.idle_until: idle until `ts`, taking the arrivals before it and those back to back
 * with them; interrupts while idle are busy time that slows nothing. */
static void idle_until(struct walker *w, int64_t ts)
{
    int64_t start = w->now, spans = 0;
    while (w->next < w->arrivals && w->stamps[w->next] < later(ts, w->now))
        spans += w->span[take_next(w)];
    int64_t end = later(ts, w->now);
    w->irq += spans;
    w->busy += spans;
    w->idle += end - start - spans;
    w->now = end;
}

/* Each request's loop work, its wait for its ready time (-1: none) with the wake-up, its post
 * work and its demand; its start and end. `state` holds now, busy, idle, irq and the next
 * arrival on entry and is left as the walker ends; `taken_at[i]`, unless NULL, is set for each arrival taken. */
void step_requests(int64_t n, const int64_t *ready, const int64_t *pre, const int64_t *wake, const int64_t *post,
                   const int64_t *demand, int64_t arrivals, const int64_t *stamps, const int64_t *span,
                   const int64_t *indirect, int64_t *starts, int64_t *ends, int64_t *taken_at, int64_t *state)
{
    struct walker w = {state[0], state[1], state[2], state[3], state[4], arrivals, stamps, span, indirect, taken_at};
    for (int64_t r = 0; r < n; r++) {
        work(&w, pre[r], 0);
        if (ready[r] > w.now) {
            idle_until(&w, ready[r] - wake[r]);
            work(&w, wake[r], 0);
        }
        work(&w, post[r], 0);
        starts[r] = w.now;
        work(&w, demand[r], 1);
        ends[r] = w.now;
    }
    state[0] = w.now;
    state[1] = w.busy;
    state[2] = w.idle;
    state[3] = w.irq;
    state[4] = w.next;
}
