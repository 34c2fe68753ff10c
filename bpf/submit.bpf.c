/* submit: bio submission latency (blktrace's Q2G), per device.
 *
 * block_bio_queue starts a span keyed by the bio pointer; it ends when the
 * bio gets a request (block_getrq) or is merged into one
 * (block_bio_backmerge/frontmerge). The span holds the waits before request
 * accounting: a frozen queue (__bio_queue_enter), wbt/iocost throttling and
 * tag allocation. Every span goes into a per-device histogram; spans of at
 * least min_latency_ns are also streamed with who submitted the bio.
 *
 * Bios of bio-based devices (zram, dm, md, bcache) never get a request. Their
 * spans are deleted on block_bio_complete: the kernel sets
 * BIO_TRACE_COMPLETION on every bio that passes block_bio_queue, so
 * block_bio_complete fires exactly once for each of them when it ends. That
 * keeps the map small and, more importantly, stops a freed bio whose memory
 * is reused by a later bio that skips block_bio_queue (the front part of a
 * split) from ending a stale span with a bogus huge latency. Spans wait in
 * a direct-mapped table by bio pointer (see ptr_slot); a completion missed
 * leaves a stale slot that the next bio to map there takes. */
#include "common.h"
#include "events.h"
#include "hist.h"
#include "kernel_block.h"
#include "spans.h"

/* 65536 slots x 24 B = 1.5 MB: room for a frozen queue's thousands of
 * waiting bios with few collisions. */
#define SLOT_BITS 16
#include "devhist.h"

/* Index of the bio argument of each tracepoint (see tp_arg). */
volatile const __u32 arg_bio_queue = 0;
volatile const __u32 arg_getrq = 0;
volatile const __u32 arg_backmerge = 0;
volatile const __u32 arg_frontmerge = 0;
volatile const __u32 arg_bio_complete = 1;

enum submit_end {
	END_GETRQ = 0,
	END_BACKMERGE = 1,
	END_FRONTMERGE = 2,
};

/* What block_bio_queue notes of a bio: as little as can be, since it runs
 * for every bio. The submitter's comm is taken at the end, for the slow
 * ones only: a bio gets its request or is merged in the task that queued
 * it (the end checks it is the same thread). */
struct start {
	__u64 bio; /* struct bio *, 0 when free */
	__u64 ns;
	__u32 pid;
	__u32 tgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << SLOT_BITS);
	__type(key, __u32);
	__type(value, struct start);
} starts SEC(".maps");

struct submit_event {
	__u64 start_ns;
	__u64 latency_ns;
	__u64 sector;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	__u32 opf; /* bio->bi_opf: REQ_OP_* | REQ_* flags */
	__u32 bytes;
	enum submit_end end;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

KEEP_TYPE(struct submit_event, submit_event_type);

/* A raw tracepoint: the bio is only a key here, and a raw tracepoint's
 * arguments are plain numbers (a tp_btf program would copy the pointer out
 * to use it as one). */
SEC("raw_tp/block_bio_queue")
int sub_bio_queue(__u64 *ctx)
{
	__u64 bio = raw_arg(ctx, arg_bio_queue);
	__u32 k = ptr_slot(bio);
	struct start *s = bpf_map_lookup_elem(&starts, &k);
	__u64 id = bpf_get_current_pid_tgid();

	if (!bio || !s)
		return 0;
	if (s->bio && s->bio != bio)
		lose(LOSS_MAP_FULL);
	s->ns = bpf_ktime_get_ns();
	s->pid = (__u32)id;
	s->tgid = id >> 32;
	s->bio = bio;
	return 0;
}

static __always_inline int submit_end(struct bio *bio, __u32 end)
{
	__u64 p = ptr_bits(bio);
	__u32 k = ptr_slot(p);
	struct start *sp = bpf_map_lookup_elem(&starts, &k);
	struct submit_event *e;
	struct gendisk *disk;
	__u64 now, lat, start;
	__u32 dev, pid, tgid;

	if (!sp || !p || sp->bio != p)
		return 0;
	now = bpf_ktime_get_ns();
	start = sp->ns;
	pid = sp->pid;
	tgid = sp->tgid;
	if (now < start) {
		sp->bio = 0;
		return 0;
	}
	lat = now - start;

	disk = bio_disk_btf(bio);
	dev = disk_dev_btf(disk);
	dev_hist_add(dev, disk, lat);
	if (!long_span(lat)) {
		sp->bio = 0;
		return 0;
	}

	e = EVENT_RESERVE(struct submit_event);
	if (!e) {
		sp->bio = 0;
		return 0;
	}
	e->start_ns = start;
	e->latency_ns = lat;
	e->sector = BPF_CORE_READ(bio, bi_iter.bi_sector);
	e->pid = pid;
	e->tgid = tgid;
	e->dev = dev;
	e->opf = BPF_CORE_READ(bio, bi_opf);
	e->bytes = BPF_CORE_READ(bio, bi_iter.bi_size);
	e->end = end;
	sp->bio = 0;
	/* The end runs in the thread that queued the bio; should it not,
	 * user space names the submitter from its pid. */
	e->comm[0] = 0;
	if ((__u32)bpf_get_current_pid_tgid() == pid)
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->disk_name[0] = 0;
	if (disk)
		bpf_core_read_str(e->disk_name, sizeof(e->disk_name), &disk->disk_name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/block_getrq")
int sub_getrq(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_getrq), END_GETRQ);
}

SEC("tp_btf/block_bio_backmerge")
int sub_backmerge(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_backmerge), END_BACKMERGE);
}

SEC("tp_btf/block_bio_frontmerge")
int sub_frontmerge(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_frontmerge), END_FRONTMERGE);
}

SEC("raw_tp/block_bio_complete")
int sub_bio_done(__u64 *ctx)
{
	__u64 bio = raw_arg(ctx, arg_bio_complete);
	__u32 k = ptr_slot(bio);
	struct start *s = bpf_map_lookup_elem(&starts, &k);

	if (s && bio && s->bio == bio)
		s->bio = 0;
	return 0;
}

//bpf2go: -type submit_end
