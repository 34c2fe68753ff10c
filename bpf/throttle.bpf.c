/* throttle: the time a bio is held by blk-throttle (cgroup v2 io.max, v1
 * blkio.throttle.*), which parks a bio over its cgroup's limit before
 * block_bio_queue, where no tracepoint sees it.
 *
 * The bio is parked when the throttle function returns true:
 * __blk_throtl_bio (6.1+; blk_throtl_bio, its inline caller there, is a
 * function of its own up to 5.x), on fexit, else kprobe/kretprobe. It is
 * released when the throttle's dispatch submits it again: block_bio_queue
 * fires then, for the first time for that bio. The wait, from parking to
 * block_bio_queue, is streamed with the submitter when it is at least
 * min_latency_ns. User space loads only the programs of the mechanism and
 * function it chose (probes/throttle.go). */
#include "common.h"
#include <asm/ptrace.h>
#include "events.h"
#include "kernel_block.h"
#include "spans.h"

#define MAX_PARKED 65536

/* The position of the bio among block_bio_queue's arguments (0 from 5.11,
 * 1 before: the request queue came first), set by user space. */
volatile const __u32 arg_bio_queue = 0;

struct tb_parked {
	__u64 ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev;
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PARKED);
	__type(key, __u64); /* the bio */
	__type(value, struct tb_parked);
} parked SEC(".maps");

/* The bio each thread is in the throttle function with (kprobe rung). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, __u64);
} entering SEC(".maps");

/* How many bios are parked: block_bio_queue looks for none while there is
 * none (it runs for every bio). */
__s64 nparked = 0;

struct tb_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

KEEP_TYPE(struct tb_event, tb_event_type);

static __always_inline int park(struct bio *bio)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 key = (__u64)bio;
	struct tb_parked p = {};
	struct gendisk *disk;

	if (!bio)
		return 0;
	p.ns = bpf_ktime_get_ns();
	p.pid = (__u32)id;
	p.tgid = id >> 32;
	bpf_get_current_comm(p.comm, sizeof(p.comm));
	disk = bio_disk(bio);
	p.dev = disk_dev(disk);
	if (disk)
		bpf_core_read_str(p.disk_name, sizeof(p.disk_name), &disk->disk_name);
	/* A bio moved up the hierarchy is parked again: keep its first time. */
	if (bpf_map_update_elem(&parked, &key, &p, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&nparked, 1);
	return 0;
}

SEC("fexit/__blk_throtl_bio")
int BPF_PROG(tb_fexit, struct bio *bio, _Bool ret)
{
	return ret ? park(bio) : 0;
}

SEC("kprobe/__blk_throtl_bio")
int BPF_KPROBE(tb_kprobe, struct bio *bio)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 b = (__u64)bio;

	bpf_map_update_elem(&entering, &tid, &b, BPF_ANY);
	return 0;
}

SEC("kretprobe/__blk_throtl_bio")
int BPF_KRETPROBE(tb_kretprobe, _Bool ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *b = bpf_map_lookup_elem(&entering, &tid);

	if (!b)
		return 0;
	if (ret)
		park((struct bio *)*b);
	bpf_map_delete_elem(&entering, &tid);
	return 0;
}

static __always_inline __u64 bio_queue_arg(__u64 *ctx)
{
	__u64 v;

	if (arg_bio_queue == 1)
		asm volatile("%0 = *(u64 *)(%1 + 8)" : "=r"(v) : "r"(ctx));
	else
		asm volatile("%0 = *(u64 *)(%1 + 0)" : "=r"(v) : "r"(ctx));
	return v;
}

SEC("raw_tp/block_bio_queue")
int tb_bio_queue(__u64 *ctx)
{
	__u64 key, now;
	struct tb_parked *p;
	struct tb_event *e;

	if (nparked <= 0)
		return 0;
	key = bio_queue_arg(ctx);
	p = bpf_map_lookup_elem(&parked, &key);
	if (!p)
		return 0;
	now = bpf_ktime_get_ns();
	if (now > p->ns && long_span(now - p->ns)) {
		e = EVENT_RESERVE(struct tb_event);
		if (e) {
			e->start_ns = p->ns;
			e->duration_ns = now - p->ns;
			e->pid = p->pid;
			e->tgid = p->tgid;
			e->dev = p->dev;
			e->pad = 0;
			__builtin_memcpy(e->comm, p->comm, sizeof(e->comm));
			__builtin_memcpy(e->disk_name, p->disk_name, sizeof(e->disk_name));
			bpf_ringbuf_submit(e, 0);
		}
	}
	bpf_map_delete_elem(&parked, &key);
	__sync_fetch_and_add(&nparked, -1);
	return 0;
}
