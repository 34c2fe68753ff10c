/* freeze: request queue freezes, outermost freeze to unfreeze, with who
 * froze the queue (pid, comm, kernel and user stack) and for how long.
 *
 * The start is blk_freeze_queue_start (or __blk_freeze_queue_start where it
 * is a function of its own, 6.13+); the end is __blk_mq_unfreeze_queue
 * (5.15+) or blk_mq_unfreeze_queue (up to 6.13). Freezes nest
 * (q->mq_freeze_depth): a start is recorded only when the depth is still 0
 * on entry, and the end is the unfreeze entered with depth 1, the one that
 * lets I/O in again. A queue whose freeze began before the probe started is
 * ignored until it is frozen again.
 *
 * fentry or kprobe: user space loads only the programs of the mechanism it
 * chose and points them at the functions this kernel has
 * (probes/freeze.go). */
#include "common.h"
#include <asm/ptrace.h>
#include "events.h"
#include "kernel_block.h"
#include "spans.h"

#define MAX_FROZEN 4096 /* queues frozen at once */
#define KSTACK_DEPTH 64
#define KSTACK_ENTRIES 1024
#define USTACK_DEPTH 32

struct frozen {
	__u64 start_ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev;
	__s32 kstack_id;
	__u32 ustack_len; /* frames in ustack */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
	__u64 ustack[USTACK_DEPTH]; /* innermost first */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FROZEN);
	__type(key, __u64); /* struct request_queue * */
	__type(value, struct frozen);
} frozen SEC(".maps");

/* Where an entry is built: too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frozen);
} scratch SEC(".maps");

/* Stack ids stay valid for the map's lifetime (no BPF_F_REUSE_STACKID). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, KSTACK_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

struct freeze_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u32 pid; /* the freezer */
	__u32 tgid;
	__u32 unfreezer_pid;
	__u32 unfreezer_tgid;
	__u32 dev;
	__s32 kstack_id;
	__u32 ustack_len;
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char unfreezer_comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
	__u64 ustack[USTACK_DEPTH];
};

KEEP_TYPE(struct freeze_event, freeze_event_type);

static __always_inline int fz_start(void *ctx, struct request_queue *q)
{
	__u64 key = (__u64)q;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	struct frozen *f;
	long n;

	if (!q || queue_freeze_depth(q) != 0)
		return 0; /* nested: the outermost freeze is already recorded */
	f = bpf_map_lookup_elem(&scratch, &zero);
	if (!f) /* always there: one slot per CPU */
		return 0;
	f->start_ns = bpf_ktime_get_ns();
	f->pid = (__u32)id;
	f->tgid = id >> 32;
	f->pad = 0;
	bpf_get_current_comm(f->comm, sizeof(f->comm));
	f->dev = queue_dev(q, f->disk_name);
	f->kstack_id = bpf_get_stackid(ctx, &kstacks, 0);
	if (f->kstack_id < 0)
		lose(LOSS_STACK);
	f->ustack_len = 0;
	n = bpf_get_stack(ctx, f->ustack, sizeof(f->ustack), BPF_F_USER_STACK);
	if (n > 0)
		f->ustack_len = n / sizeof(__u64);
	/* Depth 0: q is not frozen, so an entry still there is left over from
	 * an unfreeze that was not seen, and is replaced. */
	if (bpf_map_update_elem(&frozen, &key, f, BPF_ANY))
		lose(LOSS_MAP_FULL);
	return 0;
}

static __always_inline int fz_end(struct request_queue *q)
{
	__u64 key = (__u64)q;
	__u64 id = bpf_get_current_pid_tgid();
	struct freeze_event *e;
	struct frozen *f;
	__u64 now;

	if (!q || queue_freeze_depth(q) != 1)
		return 0; /* still frozen after this unfreeze, or not frozen */
	f = bpf_map_lookup_elem(&frozen, &key);
	if (!f)
		return 0;
	now = bpf_ktime_get_ns();
	if (now < f->start_ns || !long_span(now - f->start_ns))
		goto out;
	e = EVENT_RESERVE(struct freeze_event);
	if (!e)
		goto out;
	e->start_ns = f->start_ns;
	e->duration_ns = now - f->start_ns;
	e->pid = f->pid;
	e->tgid = f->tgid;
	e->unfreezer_pid = (__u32)id;
	e->unfreezer_tgid = id >> 32;
	e->dev = f->dev;
	e->kstack_id = f->kstack_id;
	e->ustack_len = f->ustack_len;
	e->pad = 0;
	__builtin_memcpy(e->comm, f->comm, sizeof(e->comm));
	bpf_get_current_comm(e->unfreezer_comm, sizeof(e->unfreezer_comm));
	__builtin_memcpy(e->disk_name, f->disk_name, sizeof(e->disk_name));
	__builtin_memcpy(e->ustack, f->ustack, sizeof(e->ustack));
	bpf_ringbuf_submit(e, 0);
out:
	bpf_map_delete_elem(&frozen, &key);
	return 0;
}

/* Only the queue argument is read, so each program serves either function
 * of its role (user space sets the attach target). */
SEC("fentry/blk_freeze_queue_start")
int BPF_PROG(fz_start_fentry, struct request_queue *q)
{
	return fz_start(ctx, q);
}

SEC("fentry/__blk_mq_unfreeze_queue")
int BPF_PROG(fz_end_fentry, struct request_queue *q)
{
	return fz_end(q);
}

SEC("kprobe/blk_freeze_queue_start")
int BPF_KPROBE(fz_start_kprobe, struct request_queue *q)
{
	return fz_start(ctx, q);
}

SEC("kprobe/__blk_mq_unfreeze_queue")
int BPF_KPROBE(fz_end_kprobe, struct request_queue *q)
{
	return fz_end(q);
}
