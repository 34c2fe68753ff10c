/* The ring buffer a program streams its events on, read by user space
 * (probes/bpfprobe.go, readRing), and the only way to write to it: each
 * record that finds no room is counted as a loss (LOSS_RINGBUF), never
 * dropped silently. Include after common.h. A program that needs more room
 * than EVENTS_RING_BYTES defines it before including this. */
#ifndef WHYSLOW_EVENTS_H
#define WHYSLOW_EVENTS_H

#ifndef EVENTS_RING_BYTES
#define EVENTS_RING_BYTES (256 * 1024)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

/* event_reserve reserves size bytes (a constant) on the ring, to be
 * submitted with bpf_ringbuf_submit or given back with bpf_ringbuf_discard;
 * NULL, and the loss counted, when the ring is full. */
static __always_inline void *event_reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		lose(LOSS_RINGBUF);
	return e;
}

/* EVENT_RESERVE(type) reserves one record of a type: event_reserve(sizeof). */
#define EVENT_RESERVE(type) ((type *)event_reserve(sizeof(type)))

/* event_output copies size bytes from data (built elsewhere, e.g. in a map
 * value) to the ring, counting the loss when it is full. */
static __always_inline void event_output(void *data, __u64 size)
{
	if (bpf_ringbuf_output(&events, data, size, 0))
		lose(LOSS_RINGBUF);
}

#endif
