/* Per-device latency aggregation shared by the block probes (submit,
 * service, submitfn): a HASH keyed by device whose value holds the count,
 * sum, histogram slots, maximum and name. Include after common.h, hist.h
 * and kernel_block.h, and after DECLARE_LOSSES(). User space reads it when
 * the probe stops. */
#ifndef WHYSLOW_DEVHIST_H
#define WHYSLOW_DEVHIST_H

/* Devices with a histogram at once; beyond, latencies of further devices
 * are lost (LOSS_MAP_FULL). 512 x ~3.2 KB ~= 1.6 MB. */
#define DEV_MAX 512
/* max_ns is kept per CPU (index: CPU id modulo this), so that it needs no
 * compare-and-swap (5.12+); CPUs that share an index may rarely race. */
#define DEV_MAX_CPUS 64
#define WS_EEXIST 17

/* One device's latencies: a single lookup per latency. sum_ns and the
 * slots are added to atomically; the count is the slots' sum. */
struct dev_hist {
	__u64 sum_ns;
	__u64 slots[HIST_SLOTS]; /* hist_slot(latency ns) */
	__u64 max_ns[DEV_MAX_CPUS];
	char name[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32); /* kernel dev_t of the whole disk: major<<20|minor */
	__type(value, struct dev_hist);
} dev_hist SEC(".maps");

/* A zero dev_hist to create entries from (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dev_hist);
} dev_hist_zero SEC(".maps");

/* dev_hist_add records one latency for a device. */
static __always_inline void dev_hist_add(__u32 dev, struct gendisk *disk, __u64 ns)
{
	struct dev_hist *h = bpf_map_lookup_elem(&dev_hist, &dev);
	if (!h) {
		/* First latency of this device: create its entry and record
		 * its name (rare, so the cost is fine). */
		__u32 zero = 0;
		struct dev_hist *z = bpf_map_lookup_elem(&dev_hist_zero, &zero);
		if (!z)
			return;
		long err = bpf_map_update_elem(&dev_hist, &dev, z, BPF_NOEXIST);
		if (err && err != -WS_EEXIST) {
			count_loss(&losses, LOSS_MAP_FULL);
			return;
		}
		h = bpf_map_lookup_elem(&dev_hist, &dev);
		if (!h)
			return;
		if (disk && !err)
			bpf_core_read_str(h->name, sizeof(h->name), &disk->disk_name);
	}
	__sync_fetch_and_add(&h->sum_ns, ns);
	/* A 64-bit index compared as such: verifiers before 5.13 do not carry
	 * a 32-bit compare's bound over to the 64-bit register. */
	__u64 slot = hist_slot(ns);
	asm volatile("" : "+r"(slot));
	if (slot < HIST_SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	__u64 *m = &h->max_ns[bpf_get_smp_processor_id() & (DEV_MAX_CPUS - 1)];
	if (ns > *m)
		*m = ns;
}

/* A table of spans in flight, by a pointer (bio, request): a direct-mapped
 * array, cheaper than a hash map on every I/O. A span whose slot another
 * span takes before it ends is lost (LOSS_MAP_FULL); each span checks the
 * slot still holds its pointer. SLOT_BITS is set by the includer. */
#ifdef SLOT_BITS
/* ptr_bits returns a pointer's value as a number: the verifier allows no
 * arithmetic on a trusted pointer, so it is copied out of the stack. */
static __always_inline __u64 ptr_bits(const void *p)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), &p);
	return v;
}

static __always_inline __u32 ptr_slot(__u64 p)
{
	return (__u32)((p * 0x9E3779B97F4A7C15ULL) >> (64 - SLOT_BITS));
}
#endif

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
