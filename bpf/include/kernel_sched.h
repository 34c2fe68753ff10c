/* Minimal CO-RE definitions of the scheduler and process types whyslow reads
 * (offcpu.bpf.c, exec.bpf.c).
 *
 * Only the fields the programs use are listed; preserve_access_index makes
 * every access a relocation matched by name against the running kernel's BTF
 * at load time (fields inside anonymous structs, as in mm_struct, are found
 * too). No kernel headers are needed. */
#ifndef WHYSLOW_KERNEL_SCHED_H
#define WHYSLOW_KERNEL_SCHED_H

/* task->__state / sched_switch prev_state bits (include/linux/sched.h). */
#define TASK_UNINTERRUPTIBLE 0x0002
#define TASK_NOLOAD 0x0400 /* with D: TASK_IDLE, an idle kernel thread */

/* task->flags */
#define PF_KTHREAD 0x00200000
#define PF_FROZEN_OLD 0x00010000 /* PF_FROZEN up to 6.0; unused since */

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct files_struct;
struct bpf_local_storage;

/* 6.12+: set while a task that went to sleep stays on its run queue
 * (EEVDF's delayed dequeue), on_rq still 1. */
struct sched_entity {
	unsigned char sched_delayed;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int __state; /* 5.14+ */
	unsigned int flags;
	int pid;
	int tgid;
	char comm[TASK_COMM_LEN];
	struct mm_struct *mm;
	struct files_struct *files;
	struct task_struct *real_parent;
	const struct cred *cred;
	int exit_code;
	__u64 start_time; /* fork time, CLOCK_MONOTONIC ns */
	/* Set by the scheduler as the task blocks: whether its sleep counts
	 * in the load average (D, not TASK_NOLOAD, not frozen); kept until
	 * it blocks again. Read with BPF_CORE_READ_BITFIELD. */
	unsigned int sched_contributes_to_load : 1;
	/* On a run queue (0 once a sleeping task is dequeued, unless the
	 * dequeue is delayed: se.sched_delayed), and on a CPU
	 * (1 until its switch-out is complete): both read by offcpu's wake-up
	 * program for a task caught switching out. */
	int on_rq;
	int on_cpu;
	struct sched_entity se;
	/* The task's voluntary and involuntary context switches, counted
	 * before sched_switch runs. */
	unsigned long nvcsw;
	unsigned long nivcsw;
	/* The task's local storage (5.11+): NULL when no program gave it
	 * any. */
	struct bpf_local_storage *bpf_storage;
} __attribute__((preserve_access_index));

/* Up to 5.13: the state was a long named state. */
struct task_struct___old {
	long state;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

#endif
