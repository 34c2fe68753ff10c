/* Per-device latency aggregation shared by the block probes (submit,
 * service): a histogram HASH keyed {dev, slot} with atomic counters, a
 * PERCPU_HASH of {count, sum, max} per device, and each device's name.
 * Include after common.h, hist.h and kernel_block.h, and after
 * DECLARE_LOSSES(). User space reads and sums them when the probe stops. */
#ifndef WHYSLOW_DEVHIST_H
#define WHYSLOW_DEVHIST_H

#define DEV_HIST_ENTRIES 16384 /* ~50 devices with every slot used */
#define DEV_MAX 1024
#define WS_EEXIST 17

struct hist_key {
	__u32 dev; /* kernel dev_t of the whole disk: major<<20|minor */
	__u32 slot; /* hist_slot(latency ns) */
};

struct dev_stats {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;
};

struct disk_name {
	char name[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_HIST_ENTRIES);
	__type(key, struct hist_key);
	__type(value, __u64);
} dev_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32);
	__type(value, struct dev_stats);
} dev_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32);
	__type(value, struct disk_name);
} dev_names SEC(".maps");

/* dev_hist_add records one latency for a device. */
static __always_inline void dev_hist_add(__u32 dev, struct gendisk *disk, __u64 ns)
{
	struct hist_key k = { .dev = dev, .slot = hist_slot(ns) };
	__u64 *cnt = bpf_map_lookup_elem(&dev_hist, &k);
	if (!cnt) {
		__u64 zero = 0;
		long err = bpf_map_update_elem(&dev_hist, &k, &zero, BPF_NOEXIST);
		if (err && err != -WS_EEXIST) {
			count_loss(&losses, LOSS_MAP_FULL);
			return;
		}
		cnt = bpf_map_lookup_elem(&dev_hist, &k);
		if (!cnt)
			return;
	}
	__sync_fetch_and_add(cnt, 1);

	struct dev_stats *st = bpf_map_lookup_elem(&dev_stats, &dev);
	if (!st) {
		/* First latency of this device on this CPU: create the entry
		 * and record the device's name (rare, so the cost is fine). */
		struct dev_stats zero = {};
		long err = bpf_map_update_elem(&dev_stats, &dev, &zero, BPF_NOEXIST);
		if (err && err != -WS_EEXIST) {
			count_loss(&losses, LOSS_MAP_FULL);
			return;
		}
		struct disk_name n = {};
		if (disk)
			bpf_core_read_str(n.name, sizeof(n.name), &disk->disk_name);
		bpf_map_update_elem(&dev_names, &dev, &n, BPF_ANY);
		st = bpf_map_lookup_elem(&dev_stats, &dev);
		if (!st)
			return;
	}
	/* Per-CPU value: no other CPU writes it. */
	st->count++;
	st->sum_ns += ns;
	if (ns > st->max_ns)
		st->max_ns = ns;
}

/* tp_arg returns argument idx (0..2) of a tp_btf program. idx is a
 * volatile const set from user space after reading the tracepoint's
 * prototype in the kernel BTF (block tracepoints lost their request_queue
 * argument in 5.11), so the verifier sees it as a constant and only checks
 * the branch taken. The loads are written in assembly so that the compiler
 * cannot turn them into ctx + idx*8, which the verifier refuses. */
static __always_inline void *tp_arg(__u64 *ctx, __u32 idx)
{
	void *v;

	if (idx == 1)
		asm volatile("%0 = *(u64 *)(%1 + 8)" : "=r"(v) : "r"(ctx));
	else if (idx == 2)
		asm volatile("%0 = *(u64 *)(%1 + 16)" : "=r"(v) : "r"(ctx));
	else
		asm volatile("%0 = *(u64 *)(%1 + 0)" : "=r"(v) : "r"(ctx));
	return v;
}

#endif
