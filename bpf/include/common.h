/* Common includes and helpers for whyslow's BPF programs.
 *
 * Kernel types come from the small CO-RE headers next to this file
 * (kernel_*.h): only the fields the programs read, marked
 * preserve_access_index so libbpf-style relocations match them against the
 * running kernel's BTF. No kernel headers are needed at build or run time. */
#ifndef WHYSLOW_COMMON_H
#define WHYSLOW_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define TASK_COMM_LEN 16
#define DISK_NAME_LEN 32

/* Index of the loss counters every program keeps in its `losses` array. */
enum loss_kind {
	LOSS_RINGBUF = 0, /* ring buffer full: event dropped */
	LOSS_MAP_FULL = 1, /* tracking map full: a span could not be started */
	LOSS_STACK = 2, /* stack map full or stack walk failed */
	LOSS_KINDS = 3,
};

#define DECLARE_LOSSES()                                                      \
	struct {                                                              \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                      \
		__uint(max_entries, LOSS_KINDS);                              \
		__type(key, __u32);                                           \
		__type(value, __u64);                                         \
	} losses SEC(".maps")

static __always_inline void count_loss(void *map, __u32 kind)
{
	__u64 *v = bpf_map_lookup_elem(map, &kind);
	if (v)
		(*v)++;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#endif
