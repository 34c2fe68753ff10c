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

#endif
