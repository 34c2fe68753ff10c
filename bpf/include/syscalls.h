/* The raw layouts of the records of the syscalls:sys_enter_* and
 * sys_exit_* tracepoints (SEC("tracepoint/syscalls/...")), which have no
 * BTF type to read them by. */
#ifndef WHYSLOW_SYSCALLS_H
#define WHYSLOW_SYSCALLS_H

struct syscall_enter {
	__u64 common; /* common_type, flags, preempt_count, pid */
	__s64 nr;
	__u64 args[6];
};

struct syscall_exit {
	__u64 common;
	__s64 nr;
	__s64 ret;
};

#endif
