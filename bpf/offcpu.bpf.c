/* offcpu: spans tasks spend blocked in uninterruptible sleep (D state),
 * with the kernel and user stacks they blocked in and the task that woke
 * them.
 *
 * sched_switch runs on every context switch, so its fast path is short: a
 * switch-out that is not a voluntary D sleep and a switch-in of a task that
 * is not tracked cost a flag test and one hash lookup. */
#include "common.h"
#include "kernel_sched.h"

/* Spans shorter than this are not streamed (set from Config.MinLatency). */
volatile const __u64 min_latency_ns = 1000000;
/* sched_switch has a 4th argument, prev_state, since ~5.18; before, the
 * state is read from the task (set from the kernel's BTF). */
volatile const __u8 switch_has_state = 1;

#define MAX_BLOCKED 16384
/* Frames kept per stack: the map's value size bounds the walk. */
#define STACK_DEPTH 64
/* Stack ids stay valid for the map's lifetime: without
 * BPF_F_REUSE_STACKID a bucket, once filled, is never overwritten, and user
 * space never deletes. A different stack hashing to a used bucket fails
 * (-EEXIST) and is counted as LOSS_STACK. */
#define MAX_STACKS 8192

struct blocked {
	__u64 start_ns;
	__s32 kstack_id;
	__s32 ustack_id;
	__u32 waker_pid;
	__u32 waker_tgid;
	char waker_comm[TASK_COMM_LEN];
};

struct offcpu_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u32 pid;
	__u32 tgid;
	__u32 waker_pid;
	__u32 waker_tgid;
	__s32 kstack_id;
	__s32 ustack_id;
	char comm[TASK_COMM_LEN];
	char waker_comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED);
	__type(key, __u32); /* tid */
	__type(value, struct blocked);
} blocked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, MAX_STACKS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

DECLARE_LOSSES();

/* Not used by the programs: makes bpf2go emit the Go type of the event. */
struct offcpu_event offcpu_event_type;

static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return (unsigned int)BPF_CORE_READ((struct task_struct___old *)t, state);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(offcpu_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
	unsigned int prev_state;
	__u32 tid;

	if (switch_has_state)
		prev_state = (unsigned int)ctx[3];
	else
		prev_state = task_state(prev);

	/* prev goes to sleep in D state (not TASK_IDLE, not preempted). Its
	 * stack is the current one: the tracepoint fires before the switch. */
	if (!preempt && (prev_state & (TASK_UNINTERRUPTIBLE | TASK_NOLOAD)) == TASK_UNINTERRUPTIBLE) {
		struct blocked b = {};

		tid = prev->pid;
		b.start_ns = bpf_ktime_get_ns();
		b.kstack_id = bpf_get_stackid(ctx, &stacks, 0);
		if (b.kstack_id < 0)
			count_loss(&losses, LOSS_STACK);
		b.ustack_id = -1;
		if (!(prev->flags & PF_KTHREAD)) {
			b.ustack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
			if (b.ustack_id < 0)
				count_loss(&losses, LOSS_STACK);
		}
		if (bpf_map_update_elem(&blocked, &tid, &b, BPF_ANY))
			count_loss(&losses, LOSS_MAP_FULL);
	}

	/* next comes back: was it blocked, and for how long? */
	tid = next->pid;
	if (tid == 0) /* the idle task never sleeps */
		return 0;
	struct blocked *b = bpf_map_lookup_elem(&blocked, &tid);
	if (!b)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - b->start_ns >= min_latency_ns) {
		struct offcpu_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (e) {
			e->start_ns = b->start_ns;
			e->duration_ns = now - b->start_ns;
			e->pid = tid;
			e->tgid = next->tgid;
			e->waker_pid = b->waker_pid;
			e->waker_tgid = b->waker_tgid;
			e->kstack_id = b->kstack_id;
			e->ustack_id = b->ustack_id;
			__builtin_memcpy(e->waker_comm, b->waker_comm, TASK_COMM_LEN);
			bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), next->comm);
			bpf_ringbuf_submit(e, 0);
		} else {
			count_loss(&losses, LOSS_RINGBUF);
		}
	}
	bpf_map_delete_elem(&blocked, &tid);
	return 0;
}

/* The waker is the task running when the wake-up of a tracked task starts.
 * sched_waking runs in the waker's context; sched_wakeup would not (a
 * remote wake-up completes on the target CPU, in an IPI). From an interrupt
 * (e.g. an I/O completion) the waker is whatever task was interrupted,
 * often the idle task (pid 0). */
SEC("tp_btf/sched_waking")
int BPF_PROG(offcpu_wakeup, struct task_struct *p)
{
	__u32 tid = p->pid;
	struct blocked *b = bpf_map_lookup_elem(&blocked, &tid);

	if (!b || b->waker_comm[0])
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	b->waker_pid = (__u32)id;
	b->waker_tgid = id >> 32;
	bpf_get_current_comm(b->waker_comm, sizeof(b->waker_comm));
	return 0;
}
