/* syscall: the latency of storage system calls, per thread, and where the
 * time of each went while the thread was off CPU.
 *
 * A storage call is read/write and their p/v variants, fsync, fdatasync,
 * sync_file_range, sync, syncfs, msync, io_submit, io_getevents,
 * io_pgetevents and io_uring_enter on a file descriptor (or mapping, aio
 * context or io_uring ring) that
 * leads to a block device: a block device file (the device), or a file of
 * a filesystem that lives on one (its device). Everything else (pipes,
 * sockets, ttys and other character devices, tmpfs, proc, sysfs) is let go
 * at the call's entry after a few loads. sync(2) goes to every device
 * (DEV_ALL).
 *
 * At entry (sys_enter: the syscalls:sys_enter_<call> tracepoints, or
 * tp_btf sys_enter) the thread's call is noted in its state: task local
 * storage where the kernel gives it to the program, else an LRU hash by
 * thread id. At exit its latency goes into the histogram of its process x
 * device x call (call_hists: per CPU, plain adds) and a call of at least
 * min_latency_ns is streamed with its start, duration and how long it was
 * blocked.
 *
 * Off CPU inside a call (sched_switch, sched_waking; tp_btf): a sleep is
 * split at the wake-up (sched_waking) into the sleep itself, charged to the
 * kernel stack the thread slept in (walked at the switch-out, in the
 * thread's own context: bpf_get_stackid into `stacks`), and the wait in the
 * run queue after it; a switch-out of a runnable thread (preemption,
 * cond_resched, yield) is run-queue time whole. Sleeps are summed per
 * process x device x call x stack in `blocked`; user space classifies the
 * stacks into stages. A walk costs about a microsecond: walk_gap_ns bounds
 * their rate per CPU. Every map is bounded and every miss counted. */
#include "common.h"
#include "events.h"
#include "hist.h"
#include "kernel_block.h"
#include "kernel_sched.h"
#include "kernel_fs.h"
#include "spans.h"
#include "syscalls.h"


/* Set by user space. */
volatile const __u32 use_task_storage = 0; /* per-thread state in task storage (else the LRU hash) */
volatile const __u32 self_tgid = 0; /* whyslow itself: its calls are not traced */
volatile const __u8 switch_has_state = 1; /* sched_switch has prev_state (5.18+) */
/* The current task as a BTF pointer (bpf_get_current_task_btf, 5.11+):
 * its fields are plain loads instead of one helper call each. */
volatile const __u8 use_btf_task = 0;
/* Stack walks per CPU are at least this far apart: a sleep that comes
 * sooner after the last walk is summed under SC_NOT_WALKED, and user space
 * shares its time out like the walked sleeps of its process x device x
 * call. 0: every sleep is walked. */
volatile const __u64 walk_gap_ns = 0;
/* The gap before walking an interruptible sleep (S state: waits for aio
 * or io_uring completions, whose stacks repeat), at least: such sleeps
 * come at the I/O rate under a fast asynchronous load, and a walk costs
 * more than the rest of the call's programs together. Uninterruptible
 * sleeps (D: the I/O, tag, throttle, journal, lock waits that tell the
 * stages apart) keep walk_gap_ns. */
volatile const __u64 walk_gap_s_ns = 0;
/* Armed mode (probes/arm.go): while the programs on sys_enter, sys_exit,
 * sched_switch and sched_waking are detached, a thread's state may keep
 * the start of a call whose exit was not seen. User space sets this to
 * when it attached them last (bpf_ktime_get_ns' clock), and to ~0 while
 * they are detached: a call that began before it is not the thread's call
 * any more (live). 0 (never disarmed): every started call is live. */
volatile __u64 armed_at_ns = 0;
/* The seeding of calls in progress as the programs arm (sc_seed, an
 * iter/task program: task storage, 5.15+'s bpf_task_pt_regs): set by user
 * space where it loads sc_seed. */
volatile const __u8 use_task_regs = 0;

/* x86-64 numbers of the storage calls (arch/x86/entry/syscalls/syscall_64.tbl). */
enum storage_nr {
	NR_READ = 0,
	NR_WRITE = 1,
	NR_PREAD64 = 17,
	NR_PWRITE64 = 18,
	NR_READV = 19,
	NR_WRITEV = 20,
	NR_MSYNC = 26,
	NR_FSYNC = 74,
	NR_FDATASYNC = 75,
	NR_SYNC = 162,
	NR_IO_GETEVENTS = 208,
	NR_IO_SUBMIT = 209,
	NR_SYNC_FILE_RANGE = 277,
	NR_PREADV = 295,
	NR_PWRITEV = 296,
	NR_SYNCFS = 306,
	NR_PREADV2 = 327,
	NR_PWRITEV2 = 328,
	NR_IO_PGETEVENTS = 333,
	NR_IO_URING_ENTER = 426,
};

KEEP_TYPE(enum storage_nr, storage_nr_type);

/* The device of sync(2): all of them; and of an io_uring_enter on a ring
 * whose device is not known yet (the call is dropped at its exit unless
 * the ring's first file names one meanwhile). */
enum sc_dev {
	DEV_ALL = 0xffffffffU,
	DEV_PENDING = 0xfffffffeU,
};

KEEP_TYPE(enum sc_dev, sc_dev_type);

/* Threads in a storage call at once, with the LRU hash. */
#define MAX_THREADS 16384
/* Process x device x call histograms (about 2.7 KB each, per CPU in
 * call_hists, allocated as processes appear), in each of call_hists and
 * call_hists_spill; beyond, latencies are lost and counted. */
#define MAX_HISTS 2048
/* Process x device x call x stack sums of blocked time. */
#define MAX_BLOCKED 16384
/* Distinct kernel stacks, and their depth. */
#define MAX_STACKS 8192
enum sc_layout {
	STACK_DEPTH = 48,
};

KEEP_TYPE(enum sc_layout, sc_layout_type);
/* aio contexts whose device is known (from their io_submit), and
 * io_uring rings (from the files of their requests). */
#define MAX_AIO 4096
#define MAX_RINGS 4096

/* A thread's storage call in progress. */
struct sc_state {
	__u64 start_ns; /* 0: not in a storage call */
	__u64 off_ns; /* switched out at; 0: on CPU */
	__u64 wake_ns; /* woken at (sched_waking); 0: not yet */
	__u64 sleep_ns; /* asleep in this call so far */
	__u64 runq_ns; /* runnable, not running, in this call so far */
	__u32 dev;
	__u16 nr;
	__u8 preempted; /* the switch-out left it runnable */
	/* The call has slept at least once. With the LRU hash: the thread is
	 * in `inflight` (1), or found no room there (2). */
	__u8 inflight;
	__s32 stackid; /* the latest sleep's stack; <0: none */
	__u32 aio_dev; /* the device of aio_ctx, as this thread last named it */
	__u64 aio_ctx; /* the aio context of the thread's last io_submit; 0: none */
	/* The histogram slots (hist_arr) of the thread's latest calls, by
	 * nr & (HSLOT_WAYS - 1): a guess, valid when the slot's owner is the
	 * call's process x device x call (hist_owner). */
	__u32 hslot[4];
	/* The call was in progress as the programs armed, found by sc_seed:
	 * its start_ns is the arming (a lower bound). seed_key is what its
	 * exit checks it is still that call with (seed_key_of). */
	__u64 seed_key;
	__u8 seeded;
	__u8 pad2[7];
};

#define HSLOT_WAYS 4

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sc_state);
} state_task SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32); /* tid */
	__type(value, struct sc_state);
} state_tid SEC(".maps");

/* Threads whose storage call has blocked at least once and has not
 * returned yet: what user space reads at its checkpoints and at the end
 * of the run, to tell of the calls still in the kernel then (a call is
 * counted at its exit only). With task storage, user space finds them in
 * the threads' states (sc_running, an iter/task program it runs at each
 * read) and this map is not used: no map update at a call's first sleep,
 * no delete at its exit. With the LRU hash (no task storage, so no way
 * to walk the states from BPF), a thread goes in at the first sleep of
 * its call (the scheduler's program runs then anyway; a call that never
 * blocks costs nothing here), its entry is brought up to date at its
 * later sleeps, and goes at the call's exit. Beyond its room, calls are
 * counted lost (SC_LOSS_INFLIGHT). */
#define MAX_INFLIGHT 4096

struct sc_inflight {
	__u32 tgid;
	__u32 dev;
	__u32 nr;
	__s32 stackid; /* the stack of its latest sleep; <0: none */
	__u64 start_ns; /* the call's entry */
	__u64 off_ns; /* its latest sleep began at */
	__u64 sleep_ns; /* asleep in the call before its latest sleep */
	__u64 runq_ns; /* in the run queue in the call before its latest sleep */
	char comm[TASK_COMM_LEN];
};

KEEP_TYPE(struct sc_inflight, sc_inflight_type);

/* One thread's call in progress, as sc_running writes it: an `inflight`
 * entry and its key. */
struct sc_running {
	__u32 tid;
	__u32 seeded; /* in progress as the programs armed: start_ns is the arming (a lower bound) */
	struct sc_inflight call;
};

KEEP_TYPE(struct sc_running, sc_running_type);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, struct sc_inflight);
} inflight SEC(".maps");

struct sc_hist_key {
	__u32 tgid;
	__u32 dev; /* kernel dev_t (a partition's, when the file is on one), or DEV_ALL */
	__u32 nr;
	__u32 pad;
};

/* One process's calls of one kind on one device. */
struct sc_hist {
	__u64 sum_ns;
	__u64 max_ns;
	__u64 sleep_ns; /* asleep inside these calls */
	__u64 runq_ns; /* in the run queue inside these calls */
	/* Of these calls, those in progress as the programs armed (seeded:
	 * timed from the arming, their latency a lower bound). */
	__u64 seeded;
	__u64 slots[HIST_SLOTS]; /* hist_slot(latency ns) */
};

/* Every storage call adds to a histogram, so the exit must not bounce
 * cache lines between CPUs or pay atomic adds: each process x device x
 * call has a per-CPU histogram, added to with plain stores, which user
 * space sums. Its room is sized from user space to the CPU count (an
 * entry takes ~2.7 KB on every CPU); beyond it, histograms go to the
 * shared call_hists_spill (atomic adds), so none is lost for lack of
 * per-CPU room. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_HISTS); /* lowered from user space on hosts with many CPUs */
	__type(key, struct sc_hist_key);
	__type(value, struct sc_hist);
} call_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_HISTS);
	__type(key, struct sc_hist_key);
	__type(value, struct sc_hist);
} call_hists_spill SEC(".maps");

/* Histogram slots: the process x device x call histograms of the exit's
 * fast path. A slot is a per-CPU array entry (hist_arr, plain adds, an
 * inlined lookup), given to a process x device x call at its first call
 * (hist_slot_of: key to slot; hist_owner: slot to key) from the queue of
 * free slots (hist_free, filled by user space, which puts back the slots
 * of exited processes it has drained). The thread's state keeps the slots
 * of its latest calls, so a call of the same process x device x call as
 * one of the thread's latest four costs two array lookups, where the hash
 * map cost a hash of its 16-byte key and a bucket walk. When no slot is
 * free, histograms go to call_hists (and call_hists_spill) as before:
 * nothing is lost for lack of slots. Sized from user space. */
#define MAX_HIST_SLOTS 512

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_HIST_SLOTS);
	__type(key, __u32);
	__type(value, struct sc_hist);
} hist_arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_HIST_SLOTS);
	__type(key, __u32);
	__type(value, struct sc_hist_key); /* {0}: free */
} hist_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_HIST_SLOTS);
	__type(key, struct sc_hist_key);
	__type(value, __u32); /* slot */
} hist_slot_of SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, MAX_HIST_SLOTS);
	__uint(key_size, 0);
	__uint(value_size, sizeof(__u32));
} hist_free SEC(".maps");

/* Zeroes to create a histogram from (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sc_hist);
} hist_zero SEC(".maps");

struct sc_blocked_key {
	__u32 tgid;
	__u32 dev;
	__u32 nr;
	__s32 stackid; /* SC_NOT_WALKED, or other <0: the stack could not be taken */
};

/* The stackid of the sleeps not walked (walk_gap_ns). */
enum sc_stackid {
	SC_NOT_WALKED = -2,
};

KEEP_TYPE(enum sc_stackid, sc_stackid_type);

/* When each CPU last walked a stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_walk SEC(".maps");

struct sc_blocked {
	__u64 ns;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED);
	__type(key, struct sc_blocked_key);
	__type(value, struct sc_blocked);
} blocked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, MAX_STACKS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_AIO);
	__type(key, __u64); /* aio_context_t */
	__type(value, __u32); /* dev */
} aio_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_RINGS);
	__type(key, __u64); /* struct io_ring_ctx * */
	__type(value, __u32); /* dev */
} ring_devs SEC(".maps");

/* Which argument of io_uring:io_uring_file_get is the fd: 1 (5.x: ctx,
 * fd), 3 (6.x: ctx, req, user_data, fd); set from the kernel's BTF. */
volatile const __u32 file_get_fd_arg = 3;

/* Stacks not taken, and sleeps not summed, by kind (per CPU). */
enum sc_stack_loss {
	SC_LOSS_STACK = 0, /* the walk failed or found its bucket taken by another stack */
	SC_LOSS_BLOCKED = 1, /* `blocked` full: a sleep's time is lost */
	SC_LOSS_HIST = 2, /* `call_hists` full: a call's latency is lost */
	SC_LOSS_MEM = 3, /* `mem_begin` or `mem_stalls` full: a memory stall's time is lost */
	SC_LOSS_INFLIGHT = 4, /* `inflight` full: a blocked call in progress is not seen before its exit */
	SC_LOSS_SEED = 5, /* a call seeded as the programs armed whose exit was not seen (or found over): not timed */
	SC_LOSS_KINDS = 6,
};

KEEP_TYPE(enum sc_stack_loss, sc_stack_loss_type);

LOSS_COUNTERS(sc_losses, SC_LOSS_KINDS);

/* Record kinds on the ring buffer. */
enum sc_kind {
	SC_NEW = 1, /* a process x device x call seen for the first time */
	SC_SLOW = 2, /* a call of at least min_latency_ns */
};

KEEP_TYPE(enum sc_kind, sc_kind_type);

struct sc_new {
	enum sc_kind kind; /* SC_NEW */
	__u32 tgid;
	__u64 time_ns;
	__u32 pid;
	__u32 dev;
	__u32 nr;
	__u32 pad;
	__u64 cgroup_id; /* cgroup v2 id of the thread */
	char comm[TASK_COMM_LEN]; /* the thread's */
};

struct sc_slow {
	enum sc_kind kind; /* SC_SLOW */
	__u32 pid;
	__u32 tgid;
	__u32 dev;
	__u64 start_ns;
	__u64 duration_ns;
	__u64 sleep_ns;
	__u64 runq_ns;
	__s64 ret;
	__u32 nr;
	__u32 seeded; /* in progress as the programs armed: timed from the arming (a lower bound) */
	char comm[TASK_COMM_LEN];
};

KEEP_TYPE(struct sc_new, sc_new_type);
KEEP_TYPE(struct sc_slow, sc_slow_type);

/* The kernel's pt_regs, as tp_btf sys_enter/sys_exit get them. */
struct pt_regs___sc {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long ax;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

/* no_storage says that task t (a BTF pointer) has no local storage at
 * all, so none of this program's: a plain load instead of a helper call,
 * for the tasks that never made a storage call (the idle task, kernel
 * threads, most of the machine), on every context switch. */
static __always_inline int no_storage(struct task_struct *t)
{
	return bpf_core_field_exists(t->bpf_storage) && !t->bpf_storage;
}

/* cur_task is the current task as a BTF pointer where the kernel gives
 * it (use_btf_task), else NULL: taken once by a program and handed down,
 * since each bpf_get_current_task_btf is a helper call (6.18 does not
 * inline it). */
static __always_inline struct task_struct *cur_task(void)
{
	return use_btf_task ? bpf_get_current_task_btf() : 0;
}

/* cur_id is bpf_get_current_pid_tgid, from cur_task's plain loads where
 * there is one. */
static __always_inline __u64 cur_id(struct task_struct *t)
{
	if (use_btf_task && t)
		return ((__u64)(__u32)t->tgid << 32) | (__u32)t->pid;
	return bpf_get_current_pid_tgid();
}

/* state_t returns the current thread's state, creating it when asked;
 * NULL when it has none (or none could be made). t is cur_task(). */
static __always_inline struct sc_state *state_t(struct task_struct *t, __u32 tid, int create)
{
	if (use_task_storage) {
		if (!t)
			t = bpf_get_current_task_btf();
		if (!create && no_storage(t))
			return 0;
		return bpf_task_storage_get(&state_task, t, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	}
	struct sc_state *st = bpf_map_lookup_elem(&state_tid, &tid);
	if (st || !create)
		return st;
	struct sc_state zero = {};
	if (bpf_map_update_elem(&state_tid, &tid, &zero, BPF_NOEXIST) && !bpf_map_lookup_elem(&state_tid, &tid))
		return 0;
	return bpf_map_lookup_elem(&state_tid, &tid);
}

/* state_cur returns the current thread's state (state_t) for a program
 * that has not read its thread id: with task storage it needs none, so
 * cur_id is left out. t is cur_task(). */
static __always_inline struct sc_state *state_cur(struct task_struct *t, int create)
{
	return state_t(t, use_task_storage ? 0 : (__u32)cur_id(t), create);
}

/* state returns the current thread's state (state_t). */
static __always_inline struct sc_state *state(__u32 tid, int create)
{
	return state_t(0, tid, create);
}

/* state_of returns the state of task t (sched programs: t is a BTF
 * pointer), or NULL. */
static __always_inline struct sc_state *state_of(struct task_struct *t)
{
	if (use_task_storage)
		return no_storage(t) ? 0 : bpf_task_storage_get(&state_task, t, 0, 0);
	__u32 tid = t->pid;
	return bpf_map_lookup_elem(&state_tid, &tid);
}

/* live says the thread whose state st is is inside a storage call this
 * probe saw begin since it last armed (armed_at_ns). */
static __always_inline int live(struct sc_state *st)
{
	return st->start_ns && st->start_ns >= armed_at_ns;
}

/* bpf_rdonly_cast (6.2+): a pointer read from kernel memory becomes a
 * typed one whose fields are plain loads (a faulting load gives 0) instead
 * of one bpf_probe_read_kernel call each. Weak: older kernels leave it out
 * and use_cast is 0 there. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* Set by user space: bpf_rdonly_cast is there and the programs are tp_btf. */
volatile const __u8 use_cast = 0;

/* file_dev returns the device a file's I/O goes to, or 0 for a file whose
 * I/O reaches no block device. */
static __always_inline __u32 file_dev(struct file *f)
{
	if (!f)
		return 0;
	if (use_cast) {
		struct file *cf = bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file));
		struct inode *ci = cf->f_inode;
		if (!ci)
			return 0;
		unsigned short m = ci->i_mode & WS_S_IFMT;
		if (m == WS_S_IFBLK)
			return ci->i_rdev;
		if (m != WS_S_IFREG && m != WS_S_IFDIR)
			return 0;
		struct super_block *sb = ci->i_sb;
		if (!sb)
			return 0;
		struct block_device *cb = sb->s_bdev;
		return cb ? cb->bd_dev : 0;
	}
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	if (!ino)
		return 0;
	unsigned short mode = BPF_CORE_READ(ino, i_mode) & WS_S_IFMT;
	if (mode == WS_S_IFBLK)
		return BPF_CORE_READ(ino, i_rdev);
	if (mode != WS_S_IFREG && mode != WS_S_IFDIR)
		return 0;
	struct block_device *b = BPF_CORE_READ(ino, i_sb, s_bdev);
	return b ? BPF_CORE_READ(b, bd_dev) : 0;
}

/* A word of the fd table as a kernel type whose first field is a
 * pointer: bpf_rdonly_cast to it reads fds[fd] with a plain load (0 if it
 * faults) instead of a bpf_probe_read_kernel call, on every storage-call
 * number's entry. */
struct list_head___sc {
	struct list_head___sc *next;
} __attribute__((preserve_access_index));

/* fd_file returns the current task's open file fd, or NULL; t is
 * cur_task(). */
static __always_inline struct file *fd_file(struct task_struct *t, __s64 fd)
{
	struct file **fds;
	struct file *f = 0;

	if (fd < 0)
		return 0;
	if (use_btf_task && t) {
		struct files_struct *files = t->files;
		if (!files)
			return 0;
		struct fdtable *fdt = files->fdt;
		if (!fdt || (__u64)fd >= fdt->max_fds)
			return 0;
		fds = fdt->fd;
		if (use_cast) {
			struct list_head___sc *slot =
				bpf_rdonly_cast(&fds[fd], bpf_core_type_id_kernel(struct list_head___sc));
			return (struct file *)slot->next;
		}
	} else {
		struct task_struct *ct = (void *)bpf_get_current_task();
		struct fdtable *fdt = BPF_CORE_READ(ct, files, fdt);
		if (!fdt || (__u64)fd >= BPF_CORE_READ(fdt, max_fds))
			return 0;
		fds = BPF_CORE_READ(fdt, fd);
	}
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

struct vma_dev {
	__u32 dev;
};

static long vma_dev_cb(struct task_struct *task, struct vm_area_struct *vma, struct vma_dev *d)
{
	d->dev = file_dev(BPF_CORE_READ(vma, vm_file));
	return 0;
}

/* msync_dev returns the device of the file mapped at addr, where the
 * program may look for it (vma: bpf_find_vma, 5.17+; its callback cannot
 * even be loaded before 5.13, so those programs are separate). */
static __always_inline __u32 msync_dev(struct task_struct *t, __u64 addr, const int vma)
{
	struct vma_dev d = {};

	if (!vma || !t)
		return 0;
	bpf_find_vma(t, addr, vma_dev_cb, &d, 0);
	return d.dev;
}

/* Offset of aio_fildes in struct iocb (include/uapi/linux/aio_abi.h). */
#define IOCB_FILDES 20

/* aio_submit_dev returns the device of the first iocb of an io_submit. */
static __always_inline __u32 aio_submit_dev(struct task_struct *t, __s64 n, __u64 iocbpp)
{
	__u64 iocb = 0;
	__u32 fd = 0;

	if (n <= 0 || bpf_probe_read_user(&iocb, sizeof(iocb), (void *)iocbpp) ||
	    bpf_probe_read_user(&fd, sizeof(fd), (void *)(iocb + IOCB_FILDES)))
		return 0;
	return file_dev(fd_file(t, fd));
}

/* aio_note remembers the device of an io_submit as its aio context's, in
 * aio_devs for every thread, and in the thread's state, where its
 * io_getevents find it without a map lookup. The map is written only when
 * the thread's own last word on the context changes. */
static __always_inline void aio_note(struct sc_state *st, __u64 ctx, __u32 dev)
{
	if (st->aio_ctx == ctx && st->aio_dev == dev)
		return;
	bpf_map_update_elem(&aio_devs, &ctx, &dev, BPF_ANY);
	st->aio_ctx = ctx;
	st->aio_dev = dev;
}

/* aio_wait_dev returns the device of an aio context waited on: the one
 * the thread's own last io_submit on it named, else the one any thread's
 * did (aio_devs), else 0. */
static __always_inline __u32 aio_wait_dev(struct sc_state *st, __u64 ctx)
{
	if (st && st->aio_ctx == ctx)
		return st->aio_dev;
	__u32 *dev = bpf_map_lookup_elem(&aio_devs, &ctx);
	return dev ? *dev : 0;
}

/* ring_dev returns the device of the io_uring ring open as fd: the one its
 * requests' files last named (io_uring_file_get), DEV_PENDING when none
 * has yet, 0 when fd is no ring. */
static __always_inline __u32 ring_dev(struct task_struct *t, __s64 fd)
{
	struct file *f = fd_file(t, fd);
	if (!f)
		return 0;
	__u64 ring;
	if (use_cast)
		ring = (__u64)((struct file *)bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file)))->private_data;
	else
		ring = (__u64)BPF_CORE_READ(f, private_data);
	if (!ring)
		return 0;
	__u32 *dev = bpf_map_lookup_elem(&ring_devs, &ring);
	return dev ? *dev : DEV_PENDING;
}

/* call_dev returns the device storage call nr goes to, 0 for a call that
 * is not a storage call (or not on a block device), from its first three
 * arguments; st is the thread's state (NULL when it has none), looked up
 * for the calls on aio contexts only. */
static __always_inline __u32 call_dev(struct task_struct *t, long nr, __u64 a0, __u64 a1, __u64 a2, const int vma,
				      struct sc_state *st)
{
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_PREAD64:
	case NR_PWRITE64:
	case NR_READV:
	case NR_WRITEV:
	case NR_FSYNC:
	case NR_FDATASYNC:
	case NR_SYNC_FILE_RANGE:
	case NR_PREADV:
	case NR_PWRITEV:
	case NR_SYNCFS:
	case NR_PREADV2:
	case NR_PWRITEV2:
		return file_dev(fd_file(t, (__s32)a0));
	case NR_SYNC:
		return DEV_ALL;
	case NR_MSYNC:
		return msync_dev(t, a0, vma);
	case NR_IO_SUBMIT:
		return aio_submit_dev(t, (__s64)a1, a2);
	case NR_IO_GETEVENTS:
	case NR_IO_PGETEVENTS:
		return aio_wait_dev(st, a0);
	case NR_IO_URING_ENTER:
		return ring_dev(t, a0);
	}
	return 0;
}

/* storage_call tells the numbers of the storage calls from the others
 * cheaply: the test every system call pays on the tp_btf rung. */
static __always_inline int storage_call(long nr)
{
	if (nr < 64)
		return (1ULL << nr) & ((1ULL << NR_READ) | (1ULL << NR_WRITE) | (1ULL << NR_PREAD64) |
				       (1ULL << NR_PWRITE64) | (1ULL << NR_READV) | (1ULL << NR_WRITEV) |
				       (1ULL << NR_MSYNC));
	switch (nr) {
	case NR_FSYNC:
	case NR_FDATASYNC:
	case NR_SYNC:
	case NR_IO_GETEVENTS:
	case NR_IO_SUBMIT:
	case NR_SYNC_FILE_RANGE:
	case NR_PREADV:
	case NR_PWRITEV:
	case NR_SYNCFS:
	case NR_PREADV2:
	case NR_PWRITEV2:
	case NR_IO_PGETEVENTS:
	case NR_IO_URING_ENTER:
		return 1;
	}
	return 0;
}

/* seed_key_of is what tells a seeded call from a later one of the same
 * number (whose entry, on no block device, left the state alone): the
 * file of its descriptor, the aio context it waits on, nothing for sync
 * (whose every call resets the state). t is cur_task(), or the task
 * iterated. */
static __always_inline __u64 seed_key_of(struct task_struct *t, long nr, __u64 a0)
{
	switch (nr) {
	case NR_SYNC:
		return 0;
	case NR_IO_GETEVENTS:
	case NR_IO_PGETEVENTS:
		return a0;
	}
	return (__u64)fd_file(t, (__s32)a0);
}

/* state_reset makes st a new call of nr on dev that started at start_ns
 * (0: not live yet): no sleep, no run-queue time, no stack, not in
 * `inflight`, not seeded. The histogram slot guesses (hslot), the aio
 * context (aio_ctx, aio_dev) and seed_key are the thread's and stay. Used
 * by a call's entry (call_enter) and by the seeding at arming (sc_seed). */
static __always_inline void state_reset(struct sc_state *st, __u64 start_ns, __u32 dev, long nr)
{
	st->start_ns = start_ns;
	st->off_ns = 0;
	st->wake_ns = 0;
	st->sleep_ns = 0;
	st->runq_ns = 0;
	st->dev = dev;
	st->nr = nr;
	st->preempted = 0;
	st->inflight = 0;
	st->stackid = -1;
	st->seeded = 0;
}

static __always_inline void call_enter(long nr, __u64 a0, __u64 a1, __u64 a2, const int vma)
{
	/* The calls on aio contexts read the thread's state first: the
	 * device its io_submit named is there. The others find their device
	 * first: a read or write of a pipe, socket or tty (most calls of
	 * these numbers on most machines) is let go after the loads that
	 * find its inode's mode, without a helper call. */
	struct sc_state *st = 0;
	struct task_struct *t = cur_task();
	if (nr == NR_IO_GETEVENTS || nr == NR_IO_PGETEVENTS)
		st = state_t(t, (__u32)cur_id(t), 0);
	__u32 dev = call_dev(t, nr, a0, a1, a2, vma, st);
	if (!dev)
		return;
	__u64 id = cur_id(t);
	if ((__u32)(id >> 32) == self_tgid)
		return;
	if (!st)
		st = state_t(t, (__u32)id, 1);
	if (!st) {
		lose(LOSS_MAP_FULL);
		return;
	}
	if (nr == NR_IO_SUBMIT)
		aio_note(st, a0, dev);
	/* Seeded as the programs armed, and its exit was not seen (it ended
	 * before the seed was written): not timed. */
	if (st->seeded && live(st))
		count_loss(&sc_losses, SC_LOSS_SEED);
	/* A call whose exit was not seen (the thread died in it). */
	if (st->inflight && !use_task_storage) {
		__u32 tid = (__u32)id;
		bpf_map_delete_elem(&inflight, &tid);
	}
	state_reset(st, bpf_ktime_get_ns(), dev, nr);
}

/* hist_new tells user space of a process x device x call seen for the
 * first time. */
static __always_inline void hist_new(struct sc_hist_key *k, __u64 id)
{
	struct sc_new *e = EVENT_RESERVE(struct sc_new);

	if (!e)
		return;
	e->kind = SC_NEW;
	e->tgid = k->tgid;
	e->time_ns = bpf_ktime_get_ns();
	e->pid = (__u32)id;
	e->dev = k->dev;
	e->nr = k->nr;
	e->pad = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

#define WS_EEXIST 17

/* hist_spill returns the shared histogram of a process x device x call
 * that found no room in call_hists, making it when asked (new: user space
 * has not been told of it yet). */
static __always_inline struct sc_hist *hist_spill(struct sc_hist_key *k, __u64 id, int new)
{
	struct sc_hist *h = bpf_map_lookup_elem(&call_hists_spill, k);
	if (h)
		return h;
	__u32 zero = 0;
	struct sc_hist *z = bpf_map_lookup_elem(&hist_zero, &zero);
	if (!z)
		return 0;
	if (bpf_map_update_elem(&call_hists_spill, k, z, BPF_NOEXIST) == 0 && new)
		hist_new(k, id);
	h = bpf_map_lookup_elem(&call_hists_spill, k);
	if (!h)
		count_loss(&sc_losses, SC_LOSS_HIST);
	return h;
}

/* hist_add adds a call to a histogram: plain adds to this CPU's copy, or
 * atomic ones to a shared one. */
static __always_inline void hist_add(struct sc_hist *h, int shared, __u64 lat, __u64 sleep, __u64 runq, __u8 seeded)
{
	if (seeded) {
		if (shared)
			__sync_fetch_and_add(&h->seeded, 1);
		else
			h->seeded++;
	}
	__u64 slot = hist_slot(lat);
	asm volatile("" : "+r"(slot));
	if (shared) {
		__sync_fetch_and_add(&h->sum_ns, lat);
		if (sleep)
			__sync_fetch_and_add(&h->sleep_ns, sleep);
		if (runq)
			__sync_fetch_and_add(&h->runq_ns, runq);
		if (slot < HIST_SLOTS)
			__sync_fetch_and_add(&h->slots[slot], 1);
	} else {
		/* This CPU's copy: a program does not run nested in itself
		 * on one CPU. */
		h->sum_ns += lat;
		h->sleep_ns += sleep;
		h->runq_ns += runq;
		if (slot < HIST_SLOTS)
			h->slots[slot]++;
	}
	/* Shared: two threads of a process may race here and keep the
	 * smaller; the calls above min_latency_ns are streamed, and user
	 * space takes the maximum of those too. */
	if (lat > h->max_ns)
		h->max_ns = lat;
}

/* hist_count adds a call of a process x device x call to its histogram,
 * making it (and telling user space) on its first call. */
static __always_inline void hist_count(struct sc_hist_key *k, __u64 id, __u64 lat, __u64 sleep, __u64 runq, __u8 seeded)
{
	struct sc_hist *h = bpf_map_lookup_elem(&call_hists, k);
	if (h) {
		hist_add(h, 0, lat, sleep, runq, seeded);
		return;
	}
	/* First call of these on any CPU (rare, so the cost is fine); one
	 * in the spill map already when call_hists has no room. */
	h = bpf_map_lookup_elem(&call_hists_spill, k);
	if (h) {
		hist_add(h, 1, lat, sleep, runq, seeded);
		return;
	}
	__u32 zero = 0;
	struct sc_hist *z = bpf_map_lookup_elem(&hist_zero, &zero);
	if (!z)
		return;
	long err = bpf_map_update_elem(&call_hists, k, z, BPF_NOEXIST);
	if (err == 0)
		hist_new(k, id);
	h = bpf_map_lookup_elem(&call_hists, k);
	if (h) {
		hist_add(h, 0, lat, sleep, runq, seeded);
		return;
	}
	h = hist_spill(k, id, err != 0 && err != -WS_EEXIST);
	if (h)
		hist_add(h, 1, lat, sleep, runq, seeded);
}

/* slot_hist returns this CPU's copy of slot's histogram when the slot
 * belongs to k, else NULL. */
static __always_inline struct sc_hist *slot_hist(__u32 slot, struct sc_hist_key *k)
{
	struct sc_hist_key *o = bpf_map_lookup_elem(&hist_owner, &slot);
	if (!o || o->tgid != k->tgid || o->dev != k->dev || o->nr != k->nr)
		return 0;
	return bpf_map_lookup_elem(&hist_arr, &slot);
}

/* slot_take gives k a free histogram slot (and tells user space of k),
 * or finds the one another CPU gave it meanwhile; it returns the slot, or
 * -1 when none is free (k's histogram goes to call_hists then). */
static __always_inline long slot_take(struct sc_hist_key *k, __u64 id)
{
	__u32 slot;

	if (bpf_map_pop_elem(&hist_free, &slot))
		return -1;
	struct sc_hist_key *o = bpf_map_lookup_elem(&hist_owner, &slot);
	if (!o)
		return -1;
	*o = *k;
	if (bpf_map_update_elem(&hist_slot_of, k, &slot, BPF_NOEXIST) == 0) {
		hist_new(k, id);
		return slot;
	}
	/* Taken by another CPU meanwhile: the slot goes back. */
	o->tgid = 0;
	o->dev = 0;
	o->nr = 0;
	bpf_map_push_elem(&hist_free, &slot, 0);
	__u32 *s = bpf_map_lookup_elem(&hist_slot_of, k);
	return s ? *s : -1;
}

/* hist_count_slot adds a call to its process x device x call's
 * histogram: in the slot the thread's state remembers for its call when
 * that is still the one, else in the slot the key has or is given (the
 * state remembers it), else in call_hists. */
static __always_inline void hist_count_slot(struct sc_state *st, struct sc_hist_key *k, __u64 id, __u64 lat, __u64 sleep,
					    __u64 runq, __u8 seeded)
{
	__u32 way = k->nr & (HSLOT_WAYS - 1);
	struct sc_hist *h = slot_hist(st->hslot[way], k);
	if (h) {
		hist_add(h, 0, lat, sleep, runq, seeded);
		return;
	}
	long slot;
	__u32 *s = bpf_map_lookup_elem(&hist_slot_of, k);
	if (s) {
		slot = *s;
	} else {
		/* No slot yet: a histogram in call_hists already keeps it
		 * there (a key is in one place, else told of twice). */
		if (bpf_map_lookup_elem(&call_hists, k) || bpf_map_lookup_elem(&call_hists_spill, k))
			slot = -1;
		else
			slot = slot_take(k, id);
	}
	if (slot >= 0) {
		h = slot_hist(slot, k);
		if (h) {
			st->hslot[way] = slot;
			hist_add(h, 0, lat, sleep, runq, seeded);
			return;
		}
	}
	hist_count(k, id, lat, sleep, runq, seeded);
}

static __always_inline void call_exit(long ret, __u64 a0)
{
	/* With task storage the state needs no thread id: a thread with no
	 * local storage at all (one that never made a storage call) returns
	 * after one load, without a helper call. */
	struct task_struct *t = cur_task();
	struct sc_state *st = state_cur(t, 0);

	if (!st || !st->start_ns)
		return;
	if (!live(st)) {
		/* Begun before the programs were last attached: its entry
		 * is an older call's (armed mode). */
		st->start_ns = 0;
		st->seeded = 0;
		return;
	}
	__u8 seeded = st->seeded;
	if (seeded) {
		/* Seeded as the programs armed: still that call, unless it
		 * ended before the seed was written and this is a later one
		 * of the same number on no block device. */
		st->seeded = 0;
		if (seed_key_of(t, st->nr, a0) != st->seed_key) {
			count_loss(&sc_losses, SC_LOSS_SEED);
			st->start_ns = 0;
			st->inflight = 0;
			return;
		}
	}
	__u64 id = cur_id(t);
	if (st->inflight) {
		if (!use_task_storage) {
			__u32 tid = (__u32)id;
			bpf_map_delete_elem(&inflight, &tid);
		}
		st->inflight = 0;
	}
	if (st->dev == DEV_PENDING) {
		/* An io_uring_enter whose ring named no block device. */
		st->start_ns = 0;
		return;
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 lat = now > st->start_ns ? now - st->start_ns : 0;
	struct sc_hist_key k = {.tgid = id >> 32, .dev = st->dev, .nr = st->nr};
	hist_count_slot(st, &k, id, lat, st->sleep_ns, st->runq_ns, seeded);
	if (long_span(lat)) {
		struct sc_slow *e = EVENT_RESERVE(struct sc_slow);
		if (e) {
			e->kind = SC_SLOW;
			e->pid = (__u32)id;
			e->tgid = id >> 32;
			e->dev = st->dev;
			e->start_ns = st->start_ns;
			e->duration_ns = lat;
			e->sleep_ns = st->sleep_ns;
			e->runq_ns = st->runq_ns;
			e->ret = ret;
			e->nr = st->nr;
			e->seeded = seeded;
			bpf_get_current_comm(e->comm, sizeof(e->comm));
			bpf_ringbuf_submit(e, 0);
		}
	}
	st->start_ns = 0;
}

/* The tracepoint rung: the syscalls:sys_enter_<call>/sys_exit_<call>
 * tracepoints of the storage calls only. A program may read no more of a
 * record than the event has (else the attach fails with EACCES): user
 * space attaches sc_tp_enter0 to sync, sc_tp_enter1 to the one-argument
 * calls and sc_tp_enter (or sc_tp_enter_vma, which also finds msync's
 * device with bpf_find_vma, where the kernel has it) to the others. */
SEC("tracepoint/syscalls/sys_enter_sync")
int sc_tp_enter0(struct syscall_enter *ctx)
{
	call_enter(ctx->nr, 0, 0, 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_fsync")
int sc_tp_enter1(struct syscall_enter *ctx)
{
	call_enter(ctx->nr, ctx->args[0], 0, 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_pread64")
int sc_tp_enter(struct syscall_enter *ctx)
{
	call_enter(ctx->nr, ctx->args[0], ctx->args[1], ctx->args[2], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_pread64")
int sc_tp_enter_vma(struct syscall_enter *ctx)
{
	call_enter(ctx->nr, ctx->args[0], ctx->args[1], ctx->args[2], 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_pread64")
int sc_tp_exit(struct syscall_exit *ctx)
{
	call_exit(ctx->ret, 0);
	return 0;
}

/* One program of whyslow's per system call on sys_enter too: the sysfs
 * and exec probes' programs there run from this slot (their own syscall
 * tracepoints otherwise), probes/rqchain.go. */
HOOK_NEXT(sys_enter_next);

/* The tp_btf rung: every system call, told apart by its number first. */
SEC("tp_btf/sys_enter")
int BPF_PROG(sc_btf_enter, struct pt_regs___sc *regs, long id)
{
	if (storage_call(id))
		call_enter(id, regs->di, regs->si, regs->dx, 0);
	bpf_tail_call_static(ctx, &sys_enter_next, 0);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sc_btf_enter_vma, struct pt_regs___sc *regs, long id)
{
	if (storage_call(id))
		call_enter(id, regs->di, regs->si, regs->dx, 1);
	bpf_tail_call_static(ctx, &sys_enter_next, 0);
	return 0;
}

/* One program of whyslow's per hook: on sys_exit, sched_switch and
 * sched_waking, where the off-CPU probe has a program too, the syscall
 * probe's program of the tp_btf rung ends in a tail call through a
 * one-slot program array that the off-CPU probe fills with its own
 * program instead of attaching it (probes/hookchain.go): the kernel
 * dispatches one program there instead of two. An empty slot falls
 * through. The tail-called program runs in the caller's run (its time
 * and its skipped runs are the caller's). HOOK_NEXT is common.h's. */
HOOK_NEXT(sys_exit_next);
HOOK_NEXT(sched_switch_next);
HOOK_NEXT(sched_waking_next);

SEC("tp_btf/sys_exit")
int BPF_PROG(sc_btf_exit, struct pt_regs___sc *regs, long ret)
{
	if (storage_call(regs->orig_ax))
		call_exit(ret, regs->di);
	bpf_tail_call_static(ctx, &sys_exit_next, 0);
	return 0;
}

static __always_inline unsigned int sc_task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return (unsigned int)BPF_CORE_READ((struct task_struct___old *)t, state);
}

/* switch_in charges the time thread next spent off CPU in its call. */
static __always_inline void switch_in(struct task_struct *next, struct sc_state *st, __u64 now)
{
	__u64 off = st->off_ns;

	st->off_ns = 0;
	if (now <= off)
		return;
	if (st->preempted) {
		st->runq_ns += now - off;
		return;
	}
	__u64 w = st->wake_ns;
	if (w < off || w > now)
		w = now;
	st->runq_ns += now - w;
	st->sleep_ns += w - off;
	if (st->dev == DEV_PENDING)
		return;
	struct sc_blocked_key k = {.tgid = next->tgid, .dev = st->dev, .nr = st->nr, .stackid = st->stackid};
	struct sc_blocked *b = bpf_map_lookup_elem(&blocked, &k);
	if (!b) {
		struct sc_blocked z = {};
		if (bpf_map_update_elem(&blocked, &k, &z, BPF_NOEXIST) && !bpf_map_lookup_elem(&blocked, &k)) {
			count_loss(&sc_losses, SC_LOSS_BLOCKED);
			return;
		}
		b = bpf_map_lookup_elem(&blocked, &k);
		if (!b)
			return;
	}
	__sync_fetch_and_add(&b->ns, w - off);
	__sync_fetch_and_add(&b->count, 1);
}

/* note_inflight records the current thread (prev, switching out to
 * sleep in its call) in `inflight`, or brings its entry up to date. */
static __always_inline void note_inflight(struct task_struct *prev, struct sc_state *st, __u64 now)
{
	__u32 tid = prev->pid;
	struct sc_inflight *f = 0;

	if (st->dev == DEV_PENDING)
		return;
	if (st->inflight) {
		f = bpf_map_lookup_elem(&inflight, &tid);
		if (!f) {
			st->inflight = 0;
			return;
		}
	} else {
		struct sc_inflight v = {.tgid = prev->tgid, .dev = st->dev, .nr = st->nr, .start_ns = st->start_ns};
		/* current is still prev at sched_switch. */
		bpf_get_current_comm(v.comm, sizeof(v.comm));
		v.stackid = st->stackid;
		v.off_ns = now;
		v.sleep_ns = st->sleep_ns;
		v.runq_ns = st->runq_ns;
		if (bpf_map_update_elem(&inflight, &tid, &v, BPF_ANY)) {
			count_loss(&sc_losses, SC_LOSS_INFLIGHT);
			/* Not tried again in this call. */
			st->inflight = 2;
			return;
		}
		st->inflight = 1;
		return;
	}
	f->stackid = st->stackid;
	f->off_ns = now;
	f->sleep_ns = st->sleep_ns;
	f->runq_ns = st->runq_ns;
}

/* walk takes the current task's kernel stack into `stacks`, unless this
 * CPU walked one less than gap ago. */
static __always_inline __s32 walk(void *ctx, __u64 now, __u64 gap)
{
	if (gap) {
		__u32 zero = 0;
		__u64 *last = bpf_map_lookup_elem(&last_walk, &zero);
		if (!last)
			return -1;
		if (now - *last < gap)
			return SC_NOT_WALKED;
		*last = now;
	}
	__s32 id = bpf_get_stackid(ctx, &stacks, 0);
	if (id < 0) {
		count_loss(&sc_losses, SC_LOSS_STACK);
		return -1;
	}
	return id;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sc_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = 0;
	struct sc_state *st = state_of(prev);

	if (st && live(st)) {
		unsigned int prev_state = switch_has_state ? (unsigned int)ctx[3] : sc_task_state(prev);
		now = bpf_ktime_get_ns();
		st->off_ns = now;
		st->wake_ns = 0;
		st->preempted = preempt || (prev_state & 0xff) == 0;
		/* The stack of the latest sleep stays through preemptions: a
		 * call in progress is told of with it (sc_running). */
		if (!st->preempted) {
			st->stackid = walk(ctx, now, (prev_state & TASK_UNINTERRUPTIBLE) ? walk_gap_ns : walk_gap_s_ns);
			if (use_task_storage)
				st->inflight = 1;
			else if (st->inflight != 2)
				note_inflight(prev, st, now);
		}
	}
	st = state_of(next);
	if (st && st->off_ns && live(st))
		switch_in(next, st, now ? now : bpf_ktime_get_ns());
	bpf_tail_call_static(ctx, &sched_switch_next, 0);
	return 0;
}

/* file_get_fd reads the fd argument of io_uring_file_get: a load at a
 * constant offset the verifier can see (a program may read no argument
 * past the tracepoint's: the other load is verified away). */
static __always_inline __s64 file_get_fd(unsigned long long *ctx)
{
	__u64 v;

	if (file_get_fd_arg == 1)
		asm volatile("%0 = *(u64 *)(%1 + 8)" : "=r"(v) : "r"(ctx));
	else
		asm volatile("%0 = *(u64 *)(%1 + 24)" : "=r"(v) : "r"(ctx));
	return (__s32)v;
}

/* An io_uring request of the current process takes its file (in the
 * submitter, inside io_uring_enter, or in an io-wq worker of the same
 * process): a file on a block device names its ring's device, and the
 * io_uring_enter in progress, if its ring's was not known. */
SEC("tp_btf/io_uring_file_get")
int sc_ring_file(unsigned long long *ctx)
{
	__u64 ring = ctx[0];
	struct task_struct *t = cur_task();
	__u32 dev = file_dev(fd_file(t, file_get_fd(ctx)));

	if (!dev || !ring)
		return 0;
	__u32 *known = bpf_map_lookup_elem(&ring_devs, &ring);
	if (!known || *known != dev)
		bpf_map_update_elem(&ring_devs, &ring, &dev, BPF_ANY);
	struct sc_state *st = state_cur(t, 0);
	if (st && live(st) && st->dev == DEV_PENDING)
		st->dev = dev;
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(sc_waking, struct task_struct *p)
{
	struct sc_state *st = state_of(p);

	if (st && st->off_ns && !st->wake_ns)
		st->wake_ns = bpf_ktime_get_ns();
	bpf_tail_call_static(ctx, &sched_waking_next, 0);
	return 0;
}

/* The seq_file iterator's context (kernel/bpf/task_iter.c). */
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __attribute__((preserve_access_index));

#define WS_ENOSYS 38
#define WS_PF_KTHREAD 0x00200000

/* in_call says task t is inside system call nr now (use_task_regs only),
 * from the registers it entered the kernel with last, at the top of its
 * kernel stack (arch/x86/entry/entry_64.S, common.c): orig_ax is the
 * number of its last system call, also once it is back in user space,
 * and -1 after an interrupt or exception from user space; ax is -ENOSYS
 * from the entry until the call's handler returns, when the kernel puts
 * its result there, before sys_exit and the work on the way back to user
 * space (signals, task work, cgroup throttling of the return). A call
 * that returned -ENOSYS itself is taken for one in progress: no storage
 * call on a block device does. */
static __always_inline int in_call(struct task_struct *t, long nr)
{
	if (!use_task_regs)
		return 1;
	struct pt_regs___sc *regs = (void *)bpf_task_pt_regs(t);
	if (!regs)
		return 0;
	return (long)regs->orig_ax == nr && (long)regs->ax == -WS_ENOSYS;
}

/* Where sc_seed keeps the kernel stacks of the sleeps in progress as
 * the programs arm (bpf_get_task_stack: not `stacks`, whose ids only
 * bpf_get_stackid on the current task makes). Slot i is stack id
 * SC_SEED_STACK0 - i; a slot is never used again (the sums keep its id
 * for the run); beyond them a seeded sleep is not walked (SC_NOT_WALKED,
 * shared out like the walked sleeps of its process x device x call). */
#define MAX_SEED_STACKS 256
enum sc_seed_layout {
	SC_SEED_STACK0 = -16,
};

KEEP_TYPE(enum sc_seed_layout, sc_seed_layout_type);

struct sc_seed_stack {
	__u64 ips[STACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SEED_STACKS);
	__type(key, __u32);
	__type(value, struct sc_seed_stack);
} seed_stacks SEC(".maps");

/* The next free slot of seed_stacks. */
__u32 seed_stack_next = 0;

/* What sc_seed found of a thread inside a storage call. */
enum sc_seed_outcome {
	SEED_DONE = 1, /* seeded: timed from the arming */
	SEED_SEEN = 2, /* the programs saw the call begin (since the arming): nothing to seed */
	SEED_NOT = 3, /* not seeded (its device is in user memory, or not known yet; no room for its state) */
};

KEEP_TYPE(enum sc_seed_outcome, sc_seed_outcome_type);

struct sc_seed_rec {
	__u32 tid;
	__u32 tgid;
	__u32 nr;
	__u32 outcome; /* enum sc_seed_outcome */
};

KEEP_TYPE(struct sc_seed_rec, sc_seed_rec_type);

/* sc_seed seeds the state of every thread inside a storage call on a
 * block device as the programs arm (armed mode, probes/syscall_armed.go):
 * user space runs it once the programs are attached again and armed_at_ns
 * is set, so that every exit after it is seen. A seeded call starts at
 * armed_at_ns (a lower bound) and is marked (seeded): its exit times it
 * into its histogram and slow-call record as such, and its sleeps are
 * summed as those of a call whose entry was seen; a sleep in progress is
 * timed from the arming, with the stack it sleeps in. For each thread in
 * a storage call it writes an sc_seed_rec: user space counts those not
 * seeded (and looks for them in /proc while they stay blocked). The
 * device comes from the call's arguments as at its entry (call_dev);
 * io_submit's is in user memory and msync's in a mapping: not seeded. */
SEC("iter/task")
int sc_seed(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;

	if (!t || !use_task_regs || (t->flags & WS_PF_KTHREAD) || t->tgid == self_tgid)
		return 0;
	struct pt_regs___sc *regs = (void *)bpf_task_pt_regs(t);
	if (!regs)
		return 0;
	long nr = regs->orig_ax;
	if (nr < 0 || !storage_call(nr) || (long)regs->ax != -WS_ENOSYS)
		return 0;
	__u64 a0 = regs->di, a1 = regs->si, a2 = regs->dx;
	struct sc_seed_rec rec = {.tid = t->pid, .tgid = t->tgid, .nr = nr, .outcome = SEED_NOT};
	struct sc_state *st = no_storage(t) ? 0 : bpf_task_storage_get(&state_task, t, 0, 0);
	if (st && live(st)) {
		rec.outcome = SEED_SEEN;
		bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
		return 0;
	}
	__u32 dev = 0;
	if (nr != NR_IO_SUBMIT && nr != NR_MSYNC)
		dev = call_dev(t, nr, a0, a1, a2, 0, st);
	if (!dev && nr != NR_IO_SUBMIT && nr != NR_MSYNC && nr != NR_IO_GETEVENTS && nr != NR_IO_PGETEVENTS &&
	    nr != NR_IO_URING_ENTER)
		return 0; /* on no block device: no storage call */
	if (!dev || dev == DEV_PENDING) {
		bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
		return 0;
	}
	if (!st)
		st = bpf_task_storage_get(&state_task, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
		return 0;
	}
	__u64 at = armed_at_ns;
	unsigned int state = sc_task_state(t);
	state_reset(st, 0, dev, nr); /* not live (start 0) while it is written */
	st->seed_key = seed_key_of(t, nr, a0);
	st->seeded = 1;
	if (state & 0xff) {
		/* Asleep in it since before the arming: that sleep from the
		 * arming, with its stack; listed by sc_running. */
		st->off_ns = at;
		st->inflight = 1;
		st->stackid = SC_NOT_WALKED;
		/* The iterator runs in one thread at a time (user space
		 * serializes the armings). */
		__u32 slot = seed_stack_next++;
		struct sc_seed_stack *s = bpf_map_lookup_elem(&seed_stacks, &slot);
		if (s && bpf_get_task_stack(t, s->ips, sizeof(s->ips), 0) > 0)
			st->stackid = SC_SEED_STACK0 - (__s32)slot;
	} else if (bpf_core_field_exists(t->on_cpu) && !BPF_CORE_READ(t, on_cpu)) {
		/* Runnable, waiting for a CPU: in the run queue from the
		 * arming. */
		st->off_ns = at;
		st->preempted = 1;
	}
	asm volatile("" ::: "memory");
	st->start_ns = at;
	rec.outcome = SEED_DONE;
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* sc_running writes, for every thread in a storage call that has slept
 * at least once (task storage only), an sc_running record: user space
 * runs it at its checkpoints and at the end (link.Iter), instead of the
 * `inflight` map. Its off_ns is the current sleep's start, 0 when the
 * thread is on CPU or runnable; sleep_ns and runq_ns are the call's
 * before that sleep. */
SEC("iter/task")
int sc_running(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;

	if (!t || no_storage(t))
		return 0;
	struct sc_state *st = bpf_task_storage_get(&state_task, t, 0, 0);
	if (!st || !live(st) || !st->inflight || st->dev == DEV_PENDING)
		return 0;
	if (st->seeded && !in_call(t, st->nr))
		return 0; /* ended before its seed was written: no call now */
	struct sc_running r = {.tid = t->pid, .seeded = st->seeded};
	r.call.tgid = t->tgid;
	r.call.dev = st->dev;
	r.call.nr = st->nr;
	r.call.stackid = st->stackid;
	r.call.start_ns = st->start_ns;
	r.call.off_ns = st->preempted ? 0 : st->off_ns;
	r.call.sleep_ns = st->sleep_ns;
	r.call.runq_ns = st->runq_ns;
	bpf_probe_read_kernel(r.call.comm, sizeof(r.call.comm), t->comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

/* Memory stalls inside storage calls: direct reclaim (the allocator's,
 * global), memcg reclaim (a charge over its cgroup's limit) and direct
 * compaction, timed begin to end on the thread (on or off CPU) by their
 * vmscan and compaction tracepoints, and summed per process x device x
 * call x kind in `mem_stalls`. Only stalls that begin inside a storage
 * call are timed. */
enum sc_mem_kind {
	SC_MEM_DIRECT = 0, /* mm_vmscan_direct_reclaim_begin/_end */
	SC_MEM_MEMCG = 1, /* mm_vmscan_memcg_reclaim_begin/_end */
	SC_MEM_COMPACT = 2, /* mm_compaction_begin/_end (compact_zone) */
	SC_MEM_KINDS = 3,
};

KEEP_TYPE(enum sc_mem_kind, sc_mem_kind_type);

/* Threads inside a memory stall of a storage call at once. */
#define MAX_MEM_THREADS 4096
/* Process x device x call x kind sums. */
#define MAX_MEM_STALLS 4096

struct sc_mem_begin {
	__u64 ns[SC_MEM_KINDS]; /* when each kind began; 0: not in it */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_MEM_THREADS);
	__type(key, __u32); /* tid */
	__type(value, struct sc_mem_begin);
} mem_begin SEC(".maps");

struct sc_mem_key {
	__u32 tgid;
	__u32 dev;
	__u32 nr;
	__u32 kind; /* enum sc_mem_kind */
};

struct sc_mem_stall {
	__u64 ns;
	__u64 count;
	__u64 max_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_MEM_STALLS);
	__type(key, struct sc_mem_key);
	__type(value, struct sc_mem_stall);
} mem_stalls SEC(".maps");

KEEP_TYPE(struct sc_mem_key, sc_mem_key_type);
KEEP_TYPE(struct sc_mem_stall, sc_mem_stall_type);

static __always_inline void mem_begin_at(__u32 kind)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sc_state *st = state(tid, 0);

	if (!st || !live(st) || st->dev == DEV_PENDING || kind >= SC_MEM_KINDS)
		return;
	struct sc_mem_begin *b = bpf_map_lookup_elem(&mem_begin, &tid);
	if (!b) {
		struct sc_mem_begin z = {};
		bpf_map_update_elem(&mem_begin, &tid, &z, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&mem_begin, &tid);
		if (!b) {
			count_loss(&sc_losses, SC_LOSS_MEM);
			return;
		}
	}
	b->ns[kind] = bpf_ktime_get_ns();
}

static __always_inline void mem_end_at(__u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sc_mem_begin *b = bpf_map_lookup_elem(&mem_begin, &tid);

	if (!b || kind >= SC_MEM_KINDS)
		return;
	__u64 begin = b->ns[kind];
	if (!begin)
		return;
	b->ns[kind] = 0;
	struct sc_state *st = state(tid, 0);
	/* The call it began in must still be the thread's (a stall that
	 * began in a call that has ended is not timed). */
	if (!st || !live(st) || st->start_ns > begin || st->dev == DEV_PENDING)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now <= begin)
		return;
	__u64 d = now - begin;
	struct sc_mem_key k = {.tgid = id >> 32, .dev = st->dev, .nr = st->nr, .kind = kind};
	struct sc_mem_stall *m = bpf_map_lookup_elem(&mem_stalls, &k);
	if (!m) {
		struct sc_mem_stall z = {};
		bpf_map_update_elem(&mem_stalls, &k, &z, BPF_NOEXIST);
		m = bpf_map_lookup_elem(&mem_stalls, &k);
		if (!m) {
			count_loss(&sc_losses, SC_LOSS_MEM);
			return;
		}
	}
	__sync_fetch_and_add(&m->ns, d);
	__sync_fetch_and_add(&m->count, 1);
	if (d > m->max_ns)
		m->max_ns = d;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int sc_direct_begin(void *ctx)
{
	mem_begin_at(SC_MEM_DIRECT);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int sc_direct_end(void *ctx)
{
	mem_end_at(SC_MEM_DIRECT);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int sc_memcg_begin(void *ctx)
{
	mem_begin_at(SC_MEM_MEMCG);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int sc_memcg_end(void *ctx)
{
	mem_end_at(SC_MEM_MEMCG);
	return 0;
}

SEC("tp_btf/mm_compaction_begin")
int sc_compact_begin(void *ctx)
{
	mem_begin_at(SC_MEM_COMPACT);
	return 0;
}

SEC("tp_btf/mm_compaction_end")
int sc_compact_end(void *ctx)
{
	mem_end_at(SC_MEM_COMPACT);
	return 0;
}
