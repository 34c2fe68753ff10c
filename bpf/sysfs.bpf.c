/* sysfs: who opens files under /sys/ for writing. Writing a block queue
 * attribute (queue/scheduler, queue/nr_requests, ...) can freeze the
 * request queue; this names the process. User space keeps the block
 * attributes.
 *
 * Only absolute paths are seen: an openat relative to a directory fd under
 * /sys is missed (systemd-udevd writes ATTR{} with absolute paths). The
 * path is read at syscall entry from user memory; if that page is not
 * resident the read fails and the open is not reported. */
#include "common.h"
#include "events.h"
#include "syscalls.h"

#define PATH_LEN 256
#define WS_O_WRONLY 01
#define WS_O_RDWR 02

struct sysfs_event {
	__u64 ns;
	__u32 pid;
	__u32 tgid;
	__u64 flags;
	char comm[TASK_COMM_LEN];
	char path[PATH_LEN];
};

KEEP_TYPE(struct sysfs_event, sysfs_event_type);

static __always_inline int sysfs_open(const char *upath, __u64 flags)
{
	struct sysfs_event *e;
	char pre[5];
	__u64 id;

	if (!(flags & (WS_O_WRONLY | WS_O_RDWR)))
		return 0;
	if (bpf_probe_read_user(pre, sizeof(pre), upath))
		return 0;
	if (pre[0] != '/' || pre[1] != 's' || pre[2] != 'y' || pre[3] != 's' || pre[4] != '/')
		return 0;

	e = EVENT_RESERVE(struct sysfs_event);
	if (!e)
		return 0;
	id = bpf_get_current_pid_tgid();
	e->ns = bpf_ktime_get_ns();
	e->pid = (__u32)id;
	e->tgid = id >> 32;
	e->flags = flags;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (bpf_probe_read_user_str(e->path, sizeof(e->path), upath) < 0) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* openat(dfd, filename, flags, mode) */
SEC("tracepoint/syscalls/sys_enter_openat")
int sysfs_openat(struct syscall_enter *ctx)
{
	return sysfs_open((const char *)ctx->args[1], ctx->args[2]);
}

/* openat2(dfd, filename, struct open_how *how, size): how->flags is the first u64. */
SEC("tracepoint/syscalls/sys_enter_openat2")
int sysfs_openat2(struct syscall_enter *ctx)
{
	__u64 flags = 0;

	if (bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->args[2]))
		return 0;
	return sysfs_open((const char *)ctx->args[1], flags);
}

/* open(filename, flags, mode): x86-64 still has it. */
SEC("tracepoint/syscalls/sys_enter_open")
int sysfs_open_old(struct syscall_enter *ctx)
{
	return sysfs_open((const char *)ctx->args[0], ctx->args[1]);
}

/* sys_enter as tp_btf, which needs no tracefs but runs on every system
 * call (x86-64 only): where the syscall probe's program runs on sys_enter,
 * this one runs from its slot, tail-called, instead of the syscall
 * tracepoints above (one program of whyslow's per system call,
 * probes/rqchain.go); and alone when tracefs cannot be mounted. It ends
 * in a tail call to the exec probe's program there, if any. */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
} __attribute__((preserve_access_index));

#define NR_OPEN 2
#define NR_OPENAT 257
#define NR_OPENAT2 437

HOOK_NEXT(sys_enter_next);

SEC("tp_btf/sys_enter")
int sysfs_sys_enter(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long nr = (long)ctx[1];
	__u64 flags = 0;

	if ((nr == NR_OPEN || nr == NR_OPENAT || nr == NR_OPENAT2) && compat_syscall())
		nr = -1; /* a 32-bit call: ia32's numbers */
	switch (nr) {
	case NR_OPEN:
		sysfs_open((const char *)BPF_CORE_READ(regs, di), BPF_CORE_READ(regs, si));
		break;
	case NR_OPENAT:
		sysfs_open((const char *)BPF_CORE_READ(regs, si), BPF_CORE_READ(regs, dx));
		break;
	case NR_OPENAT2:
		if (!bpf_probe_read_user(&flags, sizeof(flags), (void *)BPF_CORE_READ(regs, dx)))
			sysfs_open((const char *)BPF_CORE_READ(regs, si), flags);
		break;
	}
	bpf_tail_call_static(ctx, &sys_enter_next, 0);
	return 0;
}
