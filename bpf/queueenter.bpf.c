/* queueenter: time a bio waits to enter its device's request queue, taken
 * at the function that waits: __bio_queue_enter (5.16/5.17+, the slow path
 * only: the queue is frozen or dying) or, on older kernels, blk_queue_enter
 * (on the bio path up to 5.14, called for every bio).
 *
 * Two attachments of the same logic: fentry/fexit where the kernel allows
 * tracing programs, else kprobe/kretprobe. User space loads only the
 * programs of the mechanism and function it chose (probes/queueenter.go).
 * The entry stores the start per thread when the queue is frozen; the
 * return emits the wait when it is at least min_latency_ns. Queue enter
 * does not nest within a thread. */
#include "common.h"
#include <asm/ptrace.h>
#include "events.h"
#include "kernel_block.h"
#include "spans.h"

#define MAX_WAITING 16384

enum qe_func {
	QE_BIO_QUEUE_ENTER = 0, /* __bio_queue_enter(q, bio) */
	QE_BLK_QUEUE_ENTER = 1, /* blk_queue_enter(q, flags) */
};

struct qe_start {
	__u64 ns;
	__u32 dev;
	__u32 func;
	char disk_name[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_WAITING);
	__type(key, __u32); /* tid */
	__type(value, struct qe_start);
} waiting SEC(".maps");

struct qe_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	enum qe_func func;
	__s32 ret; /* 0, or -errno when the queue was dying (-ENODEV) or nowait (-EAGAIN/-EBUSY) */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

KEEP_TYPE(struct qe_event, qe_event_type);

static __always_inline int qe_enter(struct request_queue *q, struct bio *bio, __u32 func)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct qe_start s = {};

	/* Only a frozen queue makes a bio wait here (or, rarely, a queue in
	 * runtime-PM transition or dying, which read as depth 0 and are left
	 * out). blk_queue_enter is on every bio's path before 5.15: timing its
	 * fast path would report a thread that was merely preempted in it. */
	if (q && queue_freeze_depth(q) == 0)
		return 0;
	s.ns = bpf_ktime_get_ns();
	s.func = func;
	if (bio) {
		struct gendisk *disk = bio_disk(bio);
		s.dev = disk_dev(disk);
		if (disk)
			bpf_core_read_str(s.disk_name, sizeof(s.disk_name), &disk->disk_name);
	} else {
		s.dev = queue_dev(q, s.disk_name);
	}
	if (bpf_map_update_elem(&waiting, &tid, &s, BPF_ANY))
		lose(LOSS_MAP_FULL);
	return 0;
}

static __always_inline int qe_exit(int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct qe_start *sp = bpf_map_lookup_elem(&waiting, &tid);
	struct qe_event *e;
	__u64 now;

	if (!sp)
		return 0;
	now = bpf_ktime_get_ns();
	if (now < sp->ns || !long_span(now - sp->ns))
		goto out;
	e = EVENT_RESERVE(struct qe_event);
	if (!e)
		goto out;
	e->start_ns = sp->ns;
	e->duration_ns = now - sp->ns;
	e->pid = tid;
	e->tgid = id >> 32;
	e->dev = sp->dev;
	e->func = sp->func;
	e->ret = ret;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memcpy(e->disk_name, sp->disk_name, sizeof(e->disk_name));
	bpf_ringbuf_submit(e, 0);
out:
	bpf_map_delete_elem(&waiting, &tid);
	return 0;
}

SEC("fentry/__bio_queue_enter")
int BPF_PROG(qe_bio_fentry, struct request_queue *q, struct bio *bio)
{
	return qe_enter(q, bio, QE_BIO_QUEUE_ENTER);
}

SEC("fexit/__bio_queue_enter")
int BPF_PROG(qe_bio_fexit, struct request_queue *q, struct bio *bio, int ret)
{
	return qe_exit(ret);
}

SEC("fentry/blk_queue_enter")
int BPF_PROG(qe_q_fentry, struct request_queue *q, unsigned int flags)
{
	return qe_enter(q, 0, QE_BLK_QUEUE_ENTER);
}

SEC("fexit/blk_queue_enter")
int BPF_PROG(qe_q_fexit, struct request_queue *q, unsigned int flags, int ret)
{
	return qe_exit(ret);
}

SEC("kprobe/__bio_queue_enter")
int BPF_KPROBE(qe_bio_kprobe, struct request_queue *q, struct bio *bio)
{
	return qe_enter(q, bio, QE_BIO_QUEUE_ENTER);
}

SEC("kprobe/blk_queue_enter")
int BPF_KPROBE(qe_q_kprobe, struct request_queue *q)
{
	return qe_enter(q, 0, QE_BLK_QUEUE_ENTER);
}

/* The return of either function. */
SEC("kretprobe/__bio_queue_enter")
int BPF_KRETPROBE(qe_kretprobe, int ret)
{
	return qe_exit(ret);
}

//bpf2go: -type qe_func
