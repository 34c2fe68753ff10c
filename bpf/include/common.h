/* Common includes and helpers for whyslow's BPF programs: every program
 * includes this first.
 *
 * Kernel types come from the small CO-RE headers next to this file
 * (kernel_*.h): only the fields the programs read, marked
 * preserve_access_index so libbpf-style relocations match them against the
 * running kernel's BTF. No kernel headers are needed at build or run time.
 *
 * Every program counts what it drops in its `losses` array, declared here
 * once; user space reports the counts (probes/bpfprobe.go). */
#ifndef WHYSLOW_COMMON_H
#define WHYSLOW_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define TASK_COMM_LEN 16
#define DISK_NAME_LEN 32

/* KEEP_TYPE(type, var) declares a variable that no program reads or
 * writes, so that type is in the object's BTF: bpf2go emits its Go
 * declaration, and probes/mirror_test.go compares the constants and
 * layouts Go mirrors by hand with it. */
#define KEEP_TYPE(type, var) type var

/* Index of the loss counters in `losses`. Go: lossRingbuf, lossMapFull,
 * lossStack and lossKinds in probes/bpfprobe.go. */
enum loss_kind {
	LOSS_RINGBUF = 0, /* ring buffer full: event dropped */
	LOSS_MAP_FULL = 1, /* tracking map full: a span could not be started */
	LOSS_STACK = 2, /* stack map full or stack walk failed */
	LOSS_KINDS = 3,
};

KEEP_TYPE(enum loss_kind, loss_kind_type);

/* LOSS_COUNTERS(name, kinds) declares a per-CPU array of loss counters, one
 * per kind; user space sums the CPUs. */
#define LOSS_COUNTERS(name, kinds)                                            \
	struct {                                                              \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                      \
		__uint(max_entries, kinds);                                   \
		__type(key, __u32);                                           \
		__type(value, __u64);                                         \
	} name SEC(".maps")

LOSS_COUNTERS(losses, LOSS_KINDS);

/* count_loss adds one to counter kind of an array of LOSS_COUNTERS. */
static __always_inline void count_loss(void *map, __u32 kind)
{
	__u64 *v = bpf_map_lookup_elem(map, &kind);
	if (v)
		(*v)++;
}

/* lose counts one loss of a kind in `losses`. */
static __always_inline void lose(enum loss_kind kind)
{
	count_loss(&losses, kind);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* HOOK_NEXT(name) declares a one-slot program array through which a program
 * ends in a tail call to the next program of whyslow's on its hook (filled
 * by user space: probes/hookchain.go, probes/rqchain.go); an empty slot
 * falls through. */
#define HOOK_NEXT(name)                                                       \
	struct {                                                              \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);                        \
		__uint(max_entries, 1);                                       \
		__type(key, __u32);                                           \
		__type(value, __u32);                                         \
	} name SEC(".maps")

#endif
