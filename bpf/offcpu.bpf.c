/* offcpu: spans tasks spend blocked in uninterruptible sleep (D state),
 * with the kernel and user stacks they blocked in and the task that woke
 * them.
 *
 * sched_switch runs on every context switch, so its fast path is short: a
 * switch-out that is not a voluntary D sleep and a switch-in of a task that
 * is not tracked cost a flag test and one hash lookup.
 *
 * Kernel stacks go to a stack map (few, and they repeat); user stacks are
 * carried inline from the switch-out to the event (many, and distinct). */
#include "common.h"
#include "kernel_sched.h"

/* Spans shorter than this are not streamed (set from Config.MinLatency). */
volatile const __u64 min_latency_ns = 1000000;
/* sched_switch has a 4th argument, prev_state, since ~5.18; before, the
 * state is read from the task (set from the kernel's BTF). */
volatile const __u8 switch_has_state = 1;

/* Tasks tracked at once: those in D sleep right now. Each entry carries its
 * user stack inline, so the preallocated map costs about
 * 16384 x (296 B value + 72 B key and element header) ~= 6.0 MB (bpftool's
 * memlock on 6.18). A host with more tasks in D sleep at once loses the
 * excess (LOSS_MAP_FULL). */
#define MAX_BLOCKED 16384

/* Kernel stacks go to a stack map of their own: they come from a few
 * hundred code paths and repeat, so each is stored once and the event
 * carries its id. Ids stay valid for the map's lifetime: without
 * BPF_F_REUSE_STACKID a bucket, once filled, is never overwritten, and user
 * space never deletes. A different stack hashing to a used bucket fails
 * (-EEXIST) and is counted as a lost kernel stack.
 *
 * The kernel makes roundup_pow_of_two(max_entries) buckets but preallocates
 * only max_entries stacks: 8193 gives 16384 buckets (fewer collisions) for
 * 8193 x (512 + 16) B plus 128 KiB of bucket pointers ~= 4.5 MB. */
#define KSTACK_DEPTH 64
#define KSTACK_ENTRIES 8193

/* User stacks are carried inline, in the blocked entry and then in the
 * event: user code without frame pointers (libc) makes the walk end in
 * garbage frames, so nearly every user stack is distinct and a stack map
 * would fill up and collide. The innermost frames are the useful ones. */
#define USTACK_DEPTH 32

struct blocked {
	__u64 start_ns;
	__s32 kstack_id;
	__u32 ustack_len; /* frames in ustack */
	__u32 waker_pid;
	__u32 waker_tgid;
	char waker_comm[TASK_COMM_LEN];
	__u64 ustack[USTACK_DEPTH]; /* innermost first */
};

struct offcpu_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u32 pid;
	__u32 tgid;
	__u32 waker_pid;
	__u32 waker_tgid;
	__s32 kstack_id;
	__u32 ustack_len;
	char comm[TASK_COMM_LEN];
	char waker_comm[TASK_COMM_LEN];
	__u64 ustack[USTACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED);
	__type(key, __u32); /* tid */
	__type(value, struct blocked);
} blocked SEC(".maps");

/* Where a blocked entry is built before it is copied into the map: it is
 * too large for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct blocked);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, KSTACK_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

DECLARE_LOSSES();

/* Stacks that could not be taken, by kind (per CPU). */
enum stack_loss {
	STACK_LOSS_KERNEL = 0, /* kernel stack walk failed, or its bucket is taken */
	STACK_LOSS_USER = 1, /* user stack walk failed (not: a kernel thread) */
	STACK_LOSS_KINDS = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STACK_LOSS_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} stack_losses SEC(".maps");

/* Not used by the programs: makes bpf2go emit the Go type of the event. */
struct offcpu_event offcpu_event_type;

static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return (unsigned int)BPF_CORE_READ((struct task_struct___old *)t, state);
}

/* track_sleep records that prev goes to sleep now, with its stacks: b is
 * this CPU's scratch slot, copied into the blocked map. */
static __always_inline void track_sleep(void *ctx, struct task_struct *prev, struct blocked *b)
{
	__u32 tid = prev->pid;

	b->start_ns = bpf_ktime_get_ns();
	b->waker_pid = 0;
	b->waker_tgid = 0;
	b->waker_comm[0] = 0;
	b->kstack_id = bpf_get_stackid(ctx, &kstacks, 0);
	if (b->kstack_id < 0)
		count_loss(&stack_losses, STACK_LOSS_KERNEL);
	/* Frames past ustack_len are left over from an earlier sleep on this
	 * CPU (a kernel thread has no user stack to walk). */
	b->ustack_len = 0;
	if (!(prev->flags & PF_KTHREAD)) {
		long n = bpf_get_stack(ctx, b->ustack, sizeof(b->ustack), BPF_F_USER_STACK);
		if (n < 0)
			count_loss(&stack_losses, STACK_LOSS_USER);
		else
			b->ustack_len = n / sizeof(__u64);
	}
	if (bpf_map_update_elem(&blocked, &tid, b, BPF_ANY))
		count_loss(&losses, LOSS_MAP_FULL);
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
		__u32 zero = 0;
		struct blocked *b = bpf_map_lookup_elem(&scratch, &zero);

		if (b) /* always: the array has one slot per CPU */
			track_sleep(ctx, prev, b);
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
			e->ustack_len = b->ustack_len;
			__builtin_memcpy(e->waker_comm, b->waker_comm, TASK_COMM_LEN);
			__builtin_memcpy(e->ustack, b->ustack, sizeof(e->ustack));
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
