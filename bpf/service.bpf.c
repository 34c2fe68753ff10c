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

DECLARE_LOSSES();

#include "devhist.h"

/* Index of the request argument of each tracepoint (see tp_arg). */
volatile const __u32 arg_rq_issue = 0;
volatile const __u32 arg_rq_complete = 0;

#define MAX_INFLIGHT 16384

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_INFLIGHT);
	__type(key, __u64); /* struct request * */
	__type(value, __u64); /* issue time, ns */
} issued SEC(".maps");

SEC("tp_btf/block_rq_issue")
int svc_rq_issue(__u64 *ctx)
{
	__u64 rq = (__u64)tp_arg(ctx, arg_rq_issue);
	__u64 now = bpf_ktime_get_ns();

	if (!rq)
		return 0;
	if (bpf_map_update_elem(&issued, &rq, &now, BPF_ANY))
		count_loss(&losses, LOSS_MAP_FULL);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int svc_rq_complete(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_complete);
	__u64 key = (__u64)rq, *startp, start, now;
	struct gendisk *disk;

	startp = bpf_map_lookup_elem(&issued, &key);
	if (!startp)
		return 0;
	start = *startp;
	bpf_map_delete_elem(&issued, &key);
	now = bpf_ktime_get_ns();
	if (now < start)
		return 0;
	disk = request_disk(rq);
	dev_hist_add(disk_dev(disk), disk, now - start);
	return 0;
}
