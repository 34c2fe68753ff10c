/* exec: every successful execve, with its parent, uid, file name and
 * arguments. */
#include "common.h"
#include "kernel_sched.h"

#define FILENAME_MAX_LEN 256
#define ARGS_MAX_LEN 256

/* Record kinds on the ring buffer. */
enum exec_kind {
	EXEC_EXEC = 1,
	EXEC_EXIT = 2,
};

struct exec_event {
	__u32 kind; /* EXEC_EXEC */
	__u32 pad0;
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
	char args[ARGS_MAX_LEN]; /* NUL-separated argv */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

DECLARE_LOSSES();

/* A process ended: lets user space tell which commands ran at the same
 * time (a shell pipeline) from commands run one after another. */
struct exit_event {
	__u32 kind; /* EXEC_EXIT */
	__u32 pid; /* the process (thread group leader) */
	__u64 time_ns;
	__s32 exit_code;
	__u32 pad;
};

/* Not used by the programs: make bpf2go emit the Go types of the events. */
struct exec_event exec_event_type;
struct exit_event exit_event_type;

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	struct exec_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(&losses, LOSS_RINGBUF);
		return 0;
	}
	e->kind = EXEC_EXEC;
	e->pad0 = 0;
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
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(&losses, LOSS_RINGBUF);
		return 0;
	}
	e->kind = EXEC_EXIT;
	e->pid = BPF_CORE_READ(p, tgid);
	e->time_ns = bpf_ktime_get_ns();
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
