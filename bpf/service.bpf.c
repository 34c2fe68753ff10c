/* service: request service latency per device, block_rq_issue to
 * block_rq_complete (the time the driver and the device hold a request,
 * what biolatency and iostat's await-minus-queue report). Aggregated in the
 * kernel only: nothing is streamed.
 *
 * A request that is requeued is issued again: the later issue overwrites
 * the start. block_rq_complete can fire several times for one request
 * (partial completions); the first one ends the span.
 *
 * The issue time waits in a direct-mapped slot by request pointer, which is
 * unique among requests in flight (each is its own object, until it is
 * completed and freed or reused). Two requests in flight can hash to one
 * slot: the second then waits in issued_spill, a hash by the same pointer,
 * so no span is lost to a collision; only a full spill loses one
 * (LOSS_MAP_FULL). The request's tag is no better key: it is unique only
 * within its tag set's hardware queue (or the host's, with shared tags),
 * so a key of tag, queue and device would need a hash too. A request never
 * completed (the device went away) keeps its slot until the same request
 * is issued again; requests hashed there meanwhile go to the spill. */
#include "common.h"
#include "hist.h"
#include "kernel_block.h"

/* 16384 slots x 16 B = 256 KB: far more than requests in flight. */
#define SLOT_BITS 14
#include "devhist.h"

/* Index of the request argument of each tracepoint (see tp_arg). */
volatile const __u32 arg_rq_issue = 0;
volatile const __u32 arg_rq_complete = 0;

struct issued {
	__u64 rq; /* struct request *, 0 when free */
	__u64 ns; /* issue time */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << SLOT_BITS);
	__type(key, __u32);
	__type(value, struct issued);
} issued SEC(".maps");

/* Requests in flight whose slot another request in flight held when they
 * were issued: request pointer -> issue time. A device's requests are a
 * fixed set of objects (its tags' or its scheduler's): only a pair of them
 * that share a slot collides, and only while both are in flight, so a few
 * thousand entries hold far more than every device's collisions at once. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} issued_spill SEC(".maps");

/* A raw tracepoint: the request is only a key here (see sub_bio_queue). */
SEC("raw_tp/block_rq_issue")
int svc_rq_issue(__u64 *ctx)
{
	__u64 rq = raw_arg(ctx, arg_rq_issue);
	__u32 k = ptr_slot(rq);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);
	__u64 now;

	if (!rq || !s)
		return 0;
	now = bpf_ktime_get_ns();
	if (s->rq && s->rq != rq) {
		/* Another request in flight holds the slot. */
		if (bpf_map_update_elem(&issued_spill, &rq, &now, BPF_ANY))
			lose(LOSS_MAP_FULL);
		return 0;
	}
	s->ns = now;
	s->rq = rq;
	return 0;
}

SEC("tp_btf/block_rq_complete")
int svc_rq_complete(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_complete);
	__u64 p = ptr_bits(rq);
	__u32 k = ptr_slot(p);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);
	struct gendisk *disk;
	__u64 start, now;

	if (!s || !p)
		return 0;
	if (s->rq == p) {
		start = s->ns;
		s->rq = 0;
	} else {
		/* Issued while another held the slot, or never seen issued
		 * (before the probe started; a later partial completion). */
		__u64 *ns = bpf_map_lookup_elem(&issued_spill, &p);

		if (!ns)
			return 0;
		start = *ns;
		bpf_map_delete_elem(&issued_spill, &p);
	}
	now = bpf_ktime_get_ns();
	if (now < start)
		return 0;
	disk = request_disk_btf(rq);
	dev_hist_add(disk_dev_btf(disk), disk, now - start);
	return 0;
}
