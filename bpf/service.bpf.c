/* service: request service latency per device, block_rq_issue to
 * block_rq_complete (the time the driver and the device hold a request,
 * what biolatency and iostat's await-minus-queue report). Aggregated in the
 * kernel only: nothing is streamed.
 *
 * A request that is requeued is issued again: the later issue overwrites
 * the start. block_rq_complete can fire several times for one request
 * (partial completions); the first one ends the span. Requests that are
 * never completed (the device goes away) are bounded by the LRU. */
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

SEC("tp_btf/block_rq_complete")
int svc_rq_complete(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_complete);
	__u64 p = ptr_bits(rq);
	__u32 k = ptr_slot(p);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);
	struct gendisk *disk;
	__u64 start, now;

	if (!s || !p || s->rq != p)
		return 0;
	start = s->ns;
	s->rq = 0;
	now = bpf_ktime_get_ns();
	if (now < start)
		return 0;
	disk = request_disk_btf(rq);
	dev_hist_add(disk_dev_btf(disk), disk, now - start);
	return 0;
}
