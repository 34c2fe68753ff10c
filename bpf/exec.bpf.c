/* exec: every successful execve, with its parent, uid, file name and
 * arguments; and, where the syscall tracepoints can be attached, every
 * failed one (execve or execveat returning an error), with the error. */
#include "common.h"
#include "events.h"
#include "kernel_sched.h"
#include "syscalls.h"

#define FILENAME_MAX_LEN 256
#define ARGS_MAX_LEN 256
#define EXEC_ARGS_MAX 16 /* arguments read of a failed exec */
#define EXEC_ARG_LEN 64 /* bytes read of each */

/* Record kinds on the ring buffer. */
enum exec_kind {
	EXEC_EXEC = 1,
	EXEC_EXIT = 2,
	EXEC_FAIL = 3,
};

struct exec_event {
	enum exec_kind kind; /* EXEC_EXEC, or EXEC_FAIL: an execve that returned an error */
	__s32 ret; /* EXEC_FAIL: the error, -errno; else 0 */
	__u64 time_ns;
	__u64 forked_ns; /* when the process was forked (task start_time) */
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 args_len; /* bytes of args that are valid */
	__u8 args_truncated;
	__u8 pad[3];
	char comm[TASK_COMM_LEN];
	char parent_comm[TASK_COMM_LEN];
	char filename[FILENAME_MAX_LEN];
	/* NUL-separated argv, at most ARGS_MAX_LEN bytes; the rest is room
	 * that lets the verifier of 5.10 and 6.1 accept the failed-exec reader
	 * (it cannot follow its bound on the offset: see exec_call_exit). */
	char args[ARGS_MAX_LEN + EXEC_ARG_LEN];
};

/* A process ended: lets user space tell which commands ran at the same
 * time (a shell pipeline) from commands run one after another. */
struct exit_event {
	enum exec_kind kind; /* EXEC_EXIT */
	__u32 pid; /* the process (thread group leader) */
	__u64 time_ns;
	__s32 exit_code;
	__u32 pad;
};

KEEP_TYPE(struct exec_event, exec_event_type);
KEEP_TYPE(struct exit_event, exit_event_type);

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	struct exec_event *e = EVENT_RESERVE(struct exec_event);
	if (!e)
		return 0;
	e->kind = EXEC_EXEC;
	e->ret = 0;
	e->time_ns = bpf_ktime_get_ns();
	e->forked_ns = BPF_CORE_READ(p, start_time);
	e->pid = BPF_CORE_READ(p, pid);
	e->tgid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = BPF_CORE_READ(p, cred, uid.val);
	e->args_truncated = 0;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	BPF_CORE_READ_STR_INTO(&e->parent_comm, p, real_parent, comm);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	/* argv was just copied to the new stack: arg_start..arg_end of the new mm. */
	unsigned long start = BPF_CORE_READ(p, mm, arg_start);
	unsigned long end = BPF_CORE_READ(p, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	if (len > ARGS_MAX_LEN) {
		len = ARGS_MAX_LEN;
		e->args_truncated = 1;
	}
	if (bpf_probe_read_user(e->args, len, (const void *)start))
		len = 0;
	e->args_len = len;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exec_exit, struct task_struct *p)
{
	struct exit_event *e;

	/* Threads other than the leader end too: only the process counts. */
	if (BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0;
	e = EVENT_RESERVE(struct exit_event);
	if (!e)
		return 0;
	e->kind = EXEC_EXIT;
	e->pid = BPF_CORE_READ(p, tgid);
	e->time_ns = bpf_ktime_get_ns();
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Failed execs: the syscall tracepoints. At entry the file name and argv
 * pointers are kept per thread; at exit an error is reported with them
 * (the caller's memory is unchanged when execve fails). A successful exec
 * is reported by sched_process_exec above. */

struct exec_call {
	__u64 filename; /* const char __user * */
	__u64 argv; /* const char __user *const __user * */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tid */
	__type(value, struct exec_call);
} execing SEC(".maps");

static __always_inline int exec_call_enter(__u64 filename, __u64 argv)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_call c = {.filename = filename, .argv = argv};

	if (bpf_map_update_elem(&execing, &tid, &c, BPF_ANY))
		lose(LOSS_MAP_FULL);
	return 0;
}

static __always_inline int exec_call_exit(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct exec_call *cp = bpf_map_lookup_elem(&execing, &tid);
	struct exec_call c;
	struct task_struct *task;
	struct exec_event *e;
	__u64 off = 0, idx;

	if (!cp)
		return 0;
	c = *cp;
	bpf_map_delete_elem(&execing, &tid);
	if (ret >= 0)
		return 0;
	e = EVENT_RESERVE(struct exec_event);
	if (!e)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	e->kind = EXEC_FAIL;
	e->ret = (__s32)ret;
	e->time_ns = bpf_ktime_get_ns();
	e->forked_ns = 0;
	e->pid = tid;
	e->tgid = id >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->args_truncated = 0;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	BPF_CORE_READ_STR_INTO(&e->parent_comm, task, real_parent, comm);
	e->filename[0] = 0;
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), (const void *)c.filename);
	for (int i = 0; i < EXEC_ARGS_MAX; i++) {
		__u64 arg = 0;
		long n;

		if (!c.argv || bpf_probe_read_user(&arg, sizeof(arg), (const void *)(c.argv + i * sizeof(__u64))) || !arg)
			break;
		if (off > ARGS_MAX_LEN - EXEC_ARG_LEN) {
			e->args_truncated = 1;
			break;
		}
		/* off <= ARGS_MAX_LEN - EXEC_ARG_LEN here, so the mask changes
		 * nothing; but the verifiers of 5.10 and 6.1 lose that bound
		 * (they explore the branch above with impossible ranges) and
		 * accept the access only with the mask and the room after args.
		 * The empty asm keeps the compiler from dropping the mask. */
		idx = off;
		asm volatile("" : "+r"(idx));
		n = bpf_probe_read_user_str(&e->args[idx & (ARGS_MAX_LEN - 1)], EXEC_ARG_LEN, (const void *)arg);
		if (n <= 0)
			break;
		if (n == EXEC_ARG_LEN)
			e->args_truncated = 1;
		off += n;
	}
	e->args_len = off;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int exec_enter_execve(struct syscall_enter *ctx)
{
	return exec_call_enter(ctx->args[0], ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int exec_enter_execveat(struct syscall_enter *ctx)
{
	return exec_call_enter(ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exec_exit_execve(struct syscall_exit *ctx)
{
	return exec_call_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int exec_exit_execveat(struct syscall_exit *ctx)
{
	return exec_call_exit(ctx->ret);
}

/* The same on sys_enter/sys_exit as tp_btf, told apart by the call's
 * number (x86-64): these run tail-called from the slot of the program
 * before them on the hook (the syscall probe's or the sysfs probe's on
 * sys_enter, the syscall or off-CPU probe's on sys_exit,
 * probes/rqchain.go; 32-bit calls left out, as the tracepoints do: the
 * exit finds no entry of theirs) instead of the syscall tracepoints above, which cost
 * a second handler on every system call. Last on both hooks: no slot. */
struct pt_regs___ex {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

#define NR_EXECVE 59
#define NR_EXECVEAT 322

SEC("tp_btf/sys_enter")
int BPF_PROG(exec_btf_enter, struct pt_regs___ex *regs, long id)
{
	if ((id != NR_EXECVE && id != NR_EXECVEAT) || compat_syscall())
		return 0;
	if (id == NR_EXECVE)
		return exec_call_enter(regs->di, regs->si);
	return exec_call_enter(regs->si, regs->dx);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(exec_btf_exit, struct pt_regs___ex *regs, long ret)
{
	long nr = regs->orig_ax;

	if (nr == NR_EXECVE || nr == NR_EXECVEAT)
		return exec_call_exit(ret);
	return 0;
}

//bpf2go: -type exec_kind
