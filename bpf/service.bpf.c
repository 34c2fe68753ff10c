/* service: request service latency per device, block_rq_issue to
 * block_rq_complete (the time the driver and the device hold a request,
 * what biolatency and iostat's await-minus-queue report). Aggregated in the
 * kernel only: nothing is streamed.
 *
 * A request that is requeued is issued again: the later issue overwrites
 * the start. block_rq_complete can fire several times for one request
 * (partial completions); the first one ends the span. Requests that are
 * never completed (the device goes away) are bounded by the LRU.
 *
 * block_rq_complete runs once per I/O with one program of whyslow's: the
 * submit probe's end of a request (its I/O accounting) is not a program of
 * its own on the tracepoint while this one runs, but is tail-called from
 * here (rq_complete_next, filled by user space: probes/rqcomplete.go). A
 * program run costs its dispatch (and, with bpf_stats, two clock reads)
 * before it does anything; a tail call a few instructions. */
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

/* The program that runs next on block_rq_complete (index 0), or none: the
 * tail call then falls through. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} rq_complete_next SEC(".maps");

/* A raw tracepoint: the request is only a key here (see sub_bio_queue). */
SEC("raw_tp/block_rq_issue")
int svc_rq_issue(__u64 *ctx)
{
	__u64 rq = raw_arg(ctx, arg_rq_issue);
	__u32 k = ptr_slot(rq);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);

	if (!rq || !s)
		return 0;
	if (s->rq && s->rq != rq)
		lose(LOSS_MAP_FULL);
	s->ns = bpf_ktime_get_ns();
	s->rq = rq;
	return 0;
}

/* svc_end ends the service span of a request that completes. */
static __always_inline void svc_end(struct request *rq)
{
	__u64 p = ptr_bits(rq);
	__u32 k = ptr_slot(p);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);
	struct gendisk *disk;
	__u64 start, now;

	if (!s || !p || s->rq != p)
		return;
	start = s->ns;
	s->rq = 0;
	now = bpf_ktime_get_ns();
	if (now < start)
		return;
	disk = request_disk_btf(rq);
	dev_hist_add(disk_dev_btf(disk), disk, now - start);
}

SEC("tp_btf/block_rq_complete")
int svc_rq_complete(__u64 *ctx)
{
	svc_end(tp_arg(ctx, arg_rq_complete));
	bpf_tail_call(ctx, &rq_complete_next, 0);
	return 0;
}
