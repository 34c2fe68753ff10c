/* offcpu: spans tasks spend blocked in uninterruptible sleep (D state),
 * with the kernel and user stacks they blocked in and the task that woke
 * them.
 *
 * sched_switch runs on every context switch, so its fast path is short: a
 * switch-out that is not a voluntary D sleep costs a flag test, and a
 * switch-in a load of the task's mark of a D sleep, and one hash lookup
 * only for a task that has it.
 *
 * Stacks are taken only for the spans that end up long (min_latency_ns or
 * more), which are few; most D sleeps are short and cost no stack walk:
 *   - the kernel stack is walked when the task comes back, at its switch-in,
 *     on the sleeping task (bpf_get_task_stack): it is still the stack it
 *     blocked in;
 *   - the user stack can only be walked in the task's own context. For a
 *     sleep in a system call it does not change until the call returns: it
 *     is walked after the wake-up, at the call's exit (sys_exit) or at the
 *     task's next switch-out, whichever comes first; the long span waits in
 *     `pending` until then. A sleep outside a system call (a page fault)
 *     returns to user space without a hook on the way, so its user stack is
 *     walked at the switch-out, as the sleep begins.
 * The innermost user frame is noted at the switch-out (a one-frame walk,
 * which reads no user memory) and must match at the completion: a pending
 * span never gets the user stack of another call.
 *
 * bpf_get_task_stack leaves out the scheduler's own frames (the kernel's
 * stack_trace_save_tsk skips the .sched.text and .lock.text functions:
 * __schedule, schedule, io_schedule, ...). They are put back from the
 * sleeping task's stack: the return address into __schedule that the
 * context switch saved (inactive_task_frame at thread.sp, exact), then the
 * words of the stack above it that point into kernel text, up to the
 * return address of the first frame the walk gave. kstack_prefix counts
 * them; user space keeps, after the first, those in the two sections (it
 * has kallsyms; the program loads without waiting for it). The scan can in
 * rare cases keep a stale word of a scheduler function's frame. */
#include "common.h"
/* Twice the others' room: an event is 856 bytes, with its stacks. */
#define EVENTS_RING_BYTES (512 * 1024)
#include "events.h"
#include "kernel_sched.h"
#include "spans.h"

/* sched_switch has a 4th argument, prev_state, since ~5.18; before, the
 * state is read from the task (set from the kernel's BTF). */
volatile const __u8 switch_has_state = 1;

/* x86-64: the kernel image's text lies in [KTEXT_LO, KTEXT_HI), whatever
 * KASLR chose; modules lie above. */
#define KTEXT_LO 0xffffffff80000000ULL
#define KTEXT_HI 0xffffffffc0000000ULL

/* Tasks tracked at once: those in D sleep right now. A host with more tasks
 * in D sleep at once loses the excess (LOSS_MAP_FULL). About 16384 x (56 B
 * value + 72 B key and element header) ~= 2.1 MB. */
#define MAX_BLOCKED 16384
/* Long spans waiting for their user stack at once (sys_exit or switch-out
 * comes within microseconds of the wake-up): beyond, a span is sent
 * without its user stack. 1024 x ~900 B ~= 0.9 MB. */
#define MAX_PENDING 1024
/* Sleeps outside system calls whose user stack was taken at the
 * switch-out, at once. 1024 x ~340 B ~= 0.35 MB. */
#define MAX_EAGER 1024

#define KSTACK_DEPTH 64
/* The innermost user frames are the useful ones: code without frame
 * pointers (libc) makes the walk end in garbage. */
#define USTACK_DEPTH 32

/* The task that woke a sleeping one: the task running when its wake-up
 * started (see offcpu_wakeup). comm[0] == 0: none noted. */
struct waker {
	__u32 pid;
	__u32 tgid;
	char comm[TASK_COMM_LEN];
};
/* Named in Go too (offcpuWaker), not an anonymous struct in each of its
 * holders. */
//bpf2go: -type waker

struct blocked {
	__u64 start_ns;
	__u64 user_ip; /* innermost user frame at the switch-out; 0: none to take */
	struct waker waker;
	__u8 eager; /* the user stack was taken at the switch-out (in `eager`) */
	__u8 pad[7];
};

/* A wake-up that came before the switch-out recorded the sleep (see
 * offcpu_wakeup). */
struct early {
	__u64 ns; /* when */
	__u64 switches; /* the task's context switches then (nvcsw + nivcsw) */
	struct waker waker;
};

struct ustack {
	__u32 len; /* frames */
	__u32 pad;
	__u64 ips[USTACK_DEPTH]; /* innermost first */
};

struct offcpu_event {
	__u64 start_ns;
	__u64 duration_ns;
	__u64 user_ip; /* innermost user frame at the switch-out (0: none) */
	__u32 pid;
	__u32 tgid;
	__u32 kstack_len; /* frames in kstack */
	__u32 ustack_len; /* frames in ustack */
	__u32 kstack_prefix; /* leading kstack frames from the scan (see above) */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	struct waker waker;
	__u64 kstack[KSTACK_DEPTH]; /* innermost first */
	__u64 ustack[USTACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED);
	__type(key, __u32); /* tid */
	__type(value, struct blocked);
} blocked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PENDING);
	__type(key, __u32); /* tid */
	__type(value, struct offcpu_event);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EAGER);
	__type(key, __u32); /* tid */
	__type(value, struct ustack);
} eager SEC(".maps");

/* Wake-ups of tasks caught before their switch-out recorded the sleep, by
 * the woken task. Most are taken within microseconds; those of a task that
 * did not go to sleep after all (woken before it blocked) stay until
 * pushed out (LRU), and are never taken for a later sleep (see
 * take_early). 1024 x ~100 B ~= 0.1 MB. */
#define MAX_EARLY 1024
/* A wake-up noted this long before the switch-out is not taken for its
 * sleep: the wake-up and the switch-out it races are microseconds apart. */
#define EARLY_MAX_NS 1000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_EARLY);
	__type(key, __u32); /* tid */
	__type(value, struct early);
} early SEC(".maps");

/* When the last wake-up was put in `early`: a switch-out looks in `early`
 * only shortly after one. */
volatile __u64 last_early_ns = 0;
/* Wakers taken from `early`: each was lost before `early` existed. Read
 * by tests. */
volatile __u64 early_wakers = 0;
/* A target of locked adds, the full memory barrier between a map update
 * and the next look-up (x86: a store may pass a later load). */
volatile __u64 fence_word = 0;

/* Scheduler frames put back in front of a sleeping task's stack, at most. */
#define SCHED_FRAMES 8
/* Words of the sleeping task's stack scanned for them. */
#define SCAN_WORDS 64

/* Where an event or a user stack is built before it goes into a map: too
 * large for the 512-byte BPF stack. */
struct scratch {
	struct offcpu_event e;
	struct ustack u;
	__u64 walk[KSTACK_DEPTH]; /* bpf_get_task_stack's frames */
	__u64 words[SCAN_WORDS]; /* the top of the sleeping task's stack */
	__u32 nk; /* task_kstack: the scheduler's frames found so far */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* How many spans are in `pending` (approximately: concurrent updates may
 * race, the count only gates the lookups). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} npending SEC(".maps");

/* Set by user space as the probe stops: no new span is sent or made to
 * wait, while those waiting get their user stacks. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} stopping SEC(".maps");

/* Stacks that could not be taken, and wakers not seen, by kind (per
 * CPU). */
enum stack_loss {
	STACK_LOSS_KERNEL = 0, /* kernel stack walk gave no frame */
	STACK_LOSS_USER = 1, /* user stack walk failed, or no room to wait for it */
	/* The kernel refused to walk the task's stack: bpf_get_task_stack
	 * returned an error. It does for a task whose stack it will not let
	 * anyone read (this project's 6.18 VM refuses the stacks of its init
	 * agent's threads with -EPERM, as it refuses /proc/<pid>/stack), and
	 * for one whose stack is gone (-EFAULT). Nothing the program can do
	 * about it: counted, like a user stack that cannot be walked. */
	STACK_LOSS_KERNEL_REFUSED = 2,
	/* A span sent without its waker: every D sleep ends in a wake-up
	 * (sched_waking), yet none was noted for it. offcpu_wakeup keeps
	 * the waker of a wake-up that races the switch-out (`early`); about
	 * 1 span in 100 000 of O_DIRECT writers on a loop device still
	 * loses it, cause not found (TestOffCPUWakerKept). */
	STACK_LOSS_WAKER = 3,
	STACK_LOSS_KINDS = 4,
};

KEEP_TYPE(enum stack_loss, stack_loss_type);

LOSS_COUNTERS(stack_losses, STACK_LOSS_KINDS);

KEEP_TYPE(struct offcpu_event, offcpu_event_type);

/* The user registers of a system call, as sys_exit gets them. */
struct pt_regs___ws {
	unsigned long ip;
} __attribute__((preserve_access_index));

/* x86-64: where a task that is not running keeps its stack pointer, and
 * what the context switch left there (arch/x86/include/asm/switch_to.h). */
struct thread_struct___ws {
	unsigned long sp;
} __attribute__((preserve_access_index));

struct task_struct___ws {
	struct thread_struct___ws thread;
} __attribute__((preserve_access_index));

struct inactive_task_frame___ws {
	unsigned long ret_addr;
} __attribute__((preserve_access_index));

/* task_kstack walks the kernel stack of task t, which is not running, into
 * e->kstack with the scheduler's frames in front (e->kstack_prefix of
 * them); returns the frames, or -1 when the kernel refused the walk. */
static __always_inline int task_kstack(struct task_struct *t, struct offcpu_event *e, struct scratch *s)
{
	e->kstack_prefix = 0;
	long n = bpf_get_task_stack(t, s->walk, sizeof(s->walk), 0);
	if (n < 0)
		return -1;
	if (n == 0)
		return 0;
	__u32 nwalk = n / sizeof(__u64);
	__u32 k = 0;

	if (bpf_core_field_exists(((struct task_struct___ws *)t)->thread.sp) &&
	    bpf_core_type_exists(struct inactive_task_frame___ws)) {
		__u64 sp = BPF_CORE_READ((struct task_struct___ws *)t, thread.sp);
		__u32 ret = bpf_core_field_offset(struct inactive_task_frame___ws, ret_addr) / sizeof(__u64);
		__u64 first = s->walk[0];
		__u32 found = 0;
		/* Read what there is of the scanned words (the top of an idle
		 * kernel thread's stack may be near its end). */
		if (bpf_probe_read_kernel(s->words, sizeof(s->words), (void *)sp) &&
		    bpf_probe_read_kernel(s->words, sizeof(s->words) / 2, (void *)sp))
			goto walk;
		/* Branch-free but for the end: the verifier walks the loop once
		 * instead of once per set of candidates. And the count lives in
		 * the scratch map between steps, where the verifier does not
		 * know its value: kept in a register, its exact value at each
		 * step makes the steps it walked unlike each other (inside a
		 * loop not yet fully walked, the verifier compares states by
		 * their values' ranges), and the loop was walked once for every
		 * value the count could have at each step: 780k instructions,
		 * most of a second of start-up. */
		s->nk = 0;
		for (__u32 i = ret & (SCAN_WORDS - 1); i < SCAN_WORDS; i++) {
			__u64 w = s->words[i];
			if (w == first && i > ret) {
				found = 1;
				break;
			}
			__u32 cand = (i == ret) | ((w - KTEXT_LO) < (KTEXT_HI - KTEXT_LO));
			__u32 nk = *(volatile __u32 *)&s->nk;
			e->kstack[nk & (SCHED_FRAMES - 1)] = w;
			*(volatile __u32 *)&s->nk = nk + (cand & (nk < SCHED_FRAMES - 1));
		}
		k = *(volatile __u32 *)&s->nk & (SCHED_FRAMES - 1);
		if (!found && k > 1)
			k = 1; /* no sure end of the scheduler's frames: keep the exact one */
		e->kstack_prefix = k;
	}
walk:
	/* One copy, not a loop: the verifier would walk a loop once for every
	 * way the scan can end. And of a constant size: a size that depends
	 * on k makes the verifier track k exactly (a helper's size must be
	 * known), with the same effect as above. The k words past e->kstack
	 * land in e->ustack, which is filled after this. */
	k &= SCHED_FRAMES - 1;
	bpf_probe_read_kernel(&e->kstack[k], sizeof(e->kstack), s->walk);
	return k + nwalk < KSTACK_DEPTH ? k + nwalk : KSTACK_DEPTH;
}

/* task_kstack's copy writes up to SCHED_FRAMES - 1 words past e->kstack,
 * into e->ustack. */
_Static_assert(__builtin_offsetof(struct offcpu_event, ustack) ==
			   __builtin_offsetof(struct offcpu_event, kstack) + KSTACK_DEPTH * sizeof(__u64) &&
		       USTACK_DEPTH >= SCHED_FRAMES,
	       "e->ustack must follow e->kstack, with room for the scheduler's frames");

static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return (unsigned int)BPF_CORE_READ((struct task_struct___old *)t, state);
}

static __always_inline __s64 *pending_count(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&npending, &zero);
}

/* send_pending completes the pending span of the current task, if any: its
 * user stack is walked now, while the task is still in the call it slept
 * in (the innermost frame must be the one noted when it went to sleep). */
static __always_inline void send_pending(void *ctx, __u32 tid)
{
	__s64 *n = pending_count();
	if (!n || *n <= 0)
		return;
	struct offcpu_event *p = bpf_map_lookup_elem(&pending, &tid);
	if (!p)
		return;
	struct offcpu_event *e = EVENT_RESERVE(struct offcpu_event);
	if (e) {
		bpf_probe_read_kernel(e, sizeof(*e), p);
		long len = bpf_get_stack(ctx, e->ustack, sizeof(e->ustack), BPF_F_USER_STACK);
		if (len > 0 && e->ustack[0] == e->user_ip) {
			e->ustack_len = len / sizeof(__u64);
		} else {
			e->ustack_len = 0;
			count_loss(&stack_losses, STACK_LOSS_USER);
		}
		bpf_ringbuf_submit(e, 0);
	}
	if (bpf_map_delete_elem(&pending, &tid) == 0)
		__sync_fetch_and_add(n, -1);
}

/* note_waker sets the current task as waker w. */
static __always_inline void note_waker(struct waker *w)
{
	__u64 id = bpf_get_current_pid_tgid();
	w->pid = (__u32)id;
	w->tgid = id >> 32;
	bpf_get_current_comm(w->comm, sizeof(w->comm));
}

static __always_inline __u64 task_switches(struct task_struct *t)
{
	return t->nvcsw + t->nivcsw;
}

/* take_early gives the sleep of prev, just recorded in `blocked`, the
 * waker of a wake-up that came before (offcpu_wakeup put it in `early`).
 * That wake-up belongs to this sleep when it came after the task's last
 * switch-in: the task has switched once since (this switch-out, counted
 * before sched_switch runs) or not at all. One of a task woken before it
 * blocked and which went on without a switch until this sleep would pass
 * too; EARLY_MAX_NS bounds it. */
static __always_inline void take_early(struct task_struct *prev, __u32 tid, __u64 now)
{
	/* The update of `blocked` before the look-up of `early`, as
	 * offcpu_wakeup does the other way round: one of the two sees the
	 * other's. */
	__sync_fetch_and_add(&fence_word, 1);
	struct early *e = bpf_map_lookup_elem(&early, &tid);
	if (!e)
		return;
	if ((__s64)(now - e->ns) < (__s64)EARLY_MAX_NS && task_switches(prev) - e->switches <= 1) {
		struct blocked *b = bpf_map_lookup_elem(&blocked, &tid);
		if (b && !b->waker.comm[0]) {
			b->waker = e->waker;
			__sync_fetch_and_add(&early_wakers, 1);
		}
	}
	bpf_map_delete_elem(&early, &tid);
}

/* track_sleep records that prev, the current task, goes to sleep now. */
static __always_inline void track_sleep(void *ctx, struct task_struct *prev)
{
	__u32 tid = prev->pid;
	struct blocked b = {};
	__u64 ip = 0;

	b.start_ns = bpf_ktime_get_ns();
	if (!(prev->flags & PF_KTHREAD) &&
	    bpf_get_stack(ctx, &ip, sizeof(ip), BPF_F_USER_STACK) == sizeof(ip) && ip) {
		/* In a system call, the user code is just past its `syscall`
		 * instruction (0f 05): the stack waits until the call ends. */
		__u8 insn[2] = {};
		b.user_ip = ip;
		if (bpf_probe_read_user(insn, sizeof(insn), (void *)(ip - 2)) || insn[0] != 0x0f || insn[1] != 0x05) {
			__u32 zero = 0;
			struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
			if (s) {
				long n = bpf_get_stack(ctx, s->u.ips, sizeof(s->u.ips), BPF_F_USER_STACK);
				if (n < 0) {
					count_loss(&stack_losses, STACK_LOSS_USER);
				} else {
					s->u.len = n / sizeof(__u64);
					if (bpf_map_update_elem(&eager, &tid, &s->u, BPF_ANY))
						count_loss(&stack_losses, STACK_LOSS_USER);
					else
						b.eager = 1;
				}
			}
		}
	}
	if (bpf_map_update_elem(&blocked, &tid, &b, BPF_ANY)) {
		lose(LOSS_MAP_FULL);
		return;
	}
	/* (signed: a wake-up on another CPU may be timed after start_ns) */
	if ((__s64)(b.start_ns - last_early_ns) < (__s64)EARLY_MAX_NS)
		take_early(prev, tid, b.start_ns);
}

/* span_ends handles next coming back from a tracked sleep b. */
static __always_inline void span_ends(struct task_struct *next, __u32 tid, struct blocked *b)
{
	__u64 now = bpf_ktime_get_ns();
	if (!long_span(now - b->start_ns)) {
		if (b->eager)
			bpf_map_delete_elem(&eager, &tid);
		return;
	}
	__u32 zero = 0;
	__u32 *stop = bpf_map_lookup_elem(&stopping, &zero);
	if (stop && *stop) {
		if (b->eager)
			bpf_map_delete_elem(&eager, &tid);
		return;
	}
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s) /* always there: one slot per CPU */
		return;
	struct offcpu_event *e = &s->e;
	e->start_ns = b->start_ns;
	e->duration_ns = now - b->start_ns;
	e->user_ip = b->user_ip;
	e->pid = tid;
	e->tgid = next->tgid;
	if (!b->waker.comm[0])
		count_loss(&stack_losses, STACK_LOSS_WAKER);
	e->waker = b->waker;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), next->comm);
	/* next has not run yet: its stack is the one it blocked in. */
	int k = task_kstack(next, e, s);
	e->kstack_len = k > 0 ? k : 0;
	if (k < 0)
		count_loss(&stack_losses, STACK_LOSS_KERNEL_REFUSED);
	else if (k == 0)
		count_loss(&stack_losses, STACK_LOSS_KERNEL);
	e->ustack_len = 0;
	if (b->eager) {
		struct ustack *u = bpf_map_lookup_elem(&eager, &tid);
		if (u) {
			e->ustack_len = u->len;
			bpf_probe_read_kernel(e->ustack, sizeof(e->ustack), u->ips);
		}
		bpf_map_delete_elem(&eager, &tid);
	} else if (b->user_ip) {
		/* Wait for the user stack (sys_exit or the next switch-out). */
		if (bpf_map_update_elem(&pending, &tid, e, BPF_ANY) == 0) {
			__s64 *np = pending_count();
			if (np)
				__sync_fetch_and_add(np, 1);
			return;
		}
		count_loss(&stack_losses, STACK_LOSS_USER);
	}
	event_output(e, sizeof(*e));
}

SEC("tp_btf/sched_switch")
int BPF_PROG(offcpu_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
	unsigned int prev_state;
	__u32 tid;

	/* prev is the current task: a span of it that waits for its user
	 * stack gets it now, whatever prev does next. */
	send_pending(ctx, prev->pid);

	if (switch_has_state)
		prev_state = (unsigned int)ctx[3];
	else
		prev_state = task_state(prev);

	/* prev goes to sleep in D state (not TASK_IDLE, not preempted). */
	if (!preempt && (prev_state & (TASK_UNINTERRUPTIBLE | TASK_NOLOAD)) == TASK_UNINTERRUPTIBLE)
		track_sleep(ctx, prev);

	/* next comes back: was it blocked, and for how long? */
	tid = next->pid;
	if (tid == 0) /* the idle task never sleeps */
		return 0;
	/* Only a task whose last sleep was a D sleep can be tracked: the
	 * scheduler marks such a sleep in the task as it blocks (the load
	 * average counts it), and the mark stays until the task blocks
	 * again. A task coming back from an S sleep or a preemption costs
	 * no lookup. Up to 6.0 a frozen task slept in D with PF_FROZEN,
	 * unmarked: it is looked up too. */
	if (!BPF_CORE_READ_BITFIELD(next, sched_contributes_to_load) && !(next->flags & PF_FROZEN_OLD))
		return 0;
	struct blocked *b = bpf_map_lookup_elem(&blocked, &tid);
	if (!b)
		return 0;
	span_ends(next, tid, b);
	bpf_map_delete_elem(&blocked, &tid);
	return 0;
}

/* A system call returns to user space: a span it slept in gets its user
 * stack now. */
SEC("tp_btf/sys_exit")
int BPF_PROG(offcpu_sys_exit, struct pt_regs___ws *regs, long ret)
{
	__s64 *n = pending_count();
	if (!n || *n <= 0)
		return 0;
	send_pending(ctx, (__u32)bpf_get_current_pid_tgid());
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
	/* p is still in the state it slept in: only a D sleep can be
	 * tracked, and the lookup is left to those (a plain load first; the
	 * field was `state` before 5.14). */
	unsigned int state = bpf_core_field_exists(p->__state) ? p->__state
							       : (unsigned int)((struct task_struct___old *)p)->state;
	if (!(state & TASK_UNINTERRUPTIBLE))
		return 0;
	__u32 tid = p->pid;
	struct blocked *b = bpf_map_lookup_elem(&blocked, &tid);

	if (!b) {
		/* The wake-up can come before offcpu_switch has recorded the
		 * sleep: a waker on another CPU wakes the task as it blocks
		 * (try_to_wake_up finds it off its run queue, or, from 6.12,
		 * with its dequeue delayed) while it is still switching out,
		 * before sched_switch runs. The waker is kept in `early` for
		 * that switch-out to take. The task is still on its CPU then.
		 * Other misses (TASK_IDLE) cost a load; a D sleep begun
		 * before the probe a second look-up. */
		if ((state & (TASK_UNINTERRUPTIBLE | TASK_NOLOAD)) != TASK_UNINTERRUPTIBLE)
			return 0;
		if (!p->on_cpu) {
			/* Off its CPU: its switch-out is over, and what it
			 * recorded is visible now (the scheduler clears
			 * on_cpu with a release), though it was not at the
			 * look-up above. */
			b = bpf_map_lookup_elem(&blocked, &tid);
			if (b && !b->waker.comm[0])
				note_waker(&b->waker);
			return 0;
		}
		struct early e = {};
		e.ns = bpf_ktime_get_ns();
		e.switches = task_switches(p);
		note_waker(&e.waker);
		if (bpf_map_update_elem(&early, &tid, &e, BPF_ANY))
			return 0;
		last_early_ns = e.ns;
		__sync_fetch_and_add(&fence_word, 1);
		/* The switch-out may have recorded the sleep meanwhile,
		 * before it could see `early`. */
		b = bpf_map_lookup_elem(&blocked, &tid);
		if (!b)
			return 0;
	}
	if (b->waker.comm[0])
		return 0;
	note_waker(&b->waker);
	return 0;
}
