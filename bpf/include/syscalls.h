/* The raw layouts of the records of the syscalls:sys_enter_* and
 * sys_exit_* tracepoints (SEC("tracepoint/syscalls/...")), which have no
 * BTF type to read them by. */
#ifndef WHYSLOW_SYSCALLS_H
#define WHYSLOW_SYSCALLS_H

struct syscall_enter {
	__u64 common; /* common_type, flags, preempt_count, pid */
	__s32 nr; /* an int: the 4 bytes after it are not written */
	__s32 pad;
	__u64 args[6];
};

struct syscall_exit {
	__u64 common;
	__s32 nr;
	__s32 pad;
	__s64 ret;
};

/* A program may read no more of a record than its event has (else the
 * attach fails with EACCES): a program attached to calls of N arguments
 * reads at most args[N-1]. */

/* x86-64: whether the current system call is a 32-bit (compat) one, whose
 * number is ia32's (TS_COMPAT, 0x0002, in thread_info.status, set while
 * the kernel runs such a call). The syscalls:* tracepoints skip those; a
 * tp_btf program on sys_enter/sys_exit sees them and must too, once a
 * number matched. */
struct thread_info___compat {
	__u32 status;
} __attribute__((preserve_access_index));

struct task_struct___compat {
	struct thread_info___compat thread_info;
} __attribute__((preserve_access_index));

static __always_inline int compat_syscall(void)
{
	struct task_struct___compat *t = (struct task_struct___compat *)bpf_get_current_task();

	return BPF_CORE_READ(t, thread_info.status) & 0x0002;
}

#endif
