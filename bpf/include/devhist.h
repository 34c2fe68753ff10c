/* Per-device latency aggregation shared by the block probes (submit,
 * service, submitfn). Include after common.h, hist.h and kernel_block.h.
 * User space reads the maps when the probe stops (probes/bpfprobe.go,
 * devHists; its Go twins of the structs below are compared with these by
 * probes/mirror_test.go).
 *
 * Every I/O adds to a histogram, so the fast path must not bounce cache
 * lines between CPUs: each device has a per-CPU histogram (dev_hist), added
 * to with plain stores, and user space sums the CPUs. Its room is sized
 * from user space to the CPU count (prealloc'ed: devices x CPUs x ~2.6 KB);
 * devices beyond it go to a shared histogram with atomic adds
 * (dev_hist_spill), so none is lost. */
#ifndef WHYSLOW_DEVHIST_H
#define WHYSLOW_DEVHIST_H

/* Devices with a histogram at once, at most; beyond, latencies of further
 * devices are lost (LOSS_MAP_FULL). */
#define DEV_MAX 512
/* In the spill histogram, max_ns is kept per CPU (index: CPU id modulo
 * this), so that it needs no compare-and-swap (5.12+); CPUs that share an
 * index may rarely race. */
#define DEV_MAX_CPUS 64
#define WS_EEXIST 17

/* One device's latencies on one CPU; the count is the slots' sum. */
struct dev_hist {
	__u64 sum_ns;
	__u64 max_ns;
	__u64 slots[HIST_SLOTS]; /* hist_slot(latency ns) */
};

/* One device's latencies, shared by the CPUs: sum_ns and the slots are
 * added to atomically. */
struct dev_hist_shared {
	__u64 sum_ns;
	__u64 slots[HIST_SLOTS];
	__u64 max_ns[DEV_MAX_CPUS];
};

struct dev_name {
	char name[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DEV_MAX); /* lowered from user space on hosts with many CPUs */
	__type(key, __u32); /* kernel dev_t of the whole disk: major<<20|minor */
	__type(value, struct dev_hist);
} dev_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32);
	__type(value, struct dev_hist_shared);
} dev_hist_spill SEC(".maps");

/* Each device's name, as the first latency of it saw it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32);
	__type(value, struct dev_name);
} dev_names SEC(".maps");

/* Zeroes to create entries from (never written; as large as the larger
 * value). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dev_hist_shared);
} dev_hist_zero SEC(".maps");

static __always_inline void dev_name_add(__u32 dev, struct gendisk *disk)
{
	struct dev_name n = {};

	if (!disk)
		return;
	bpf_core_read_str(n.name, sizeof(n.name), &disk->disk_name);
	bpf_map_update_elem(&dev_names, &dev, &n, BPF_NOEXIST);
}

/* dev_hist_spill_add records a latency of a device that found no room in
 * dev_hist (rare: only on hosts with many CPUs and devices). */
static __always_inline void dev_hist_spill_add(__u32 dev, __u64 ns)
{
	struct dev_hist_shared *h = bpf_map_lookup_elem(&dev_hist_spill, &dev);
	if (!h) {
		__u32 zero = 0;
		struct dev_hist_shared *z = bpf_map_lookup_elem(&dev_hist_zero, &zero);
		if (!z)
			return;
		long err = bpf_map_update_elem(&dev_hist_spill, &dev, z, BPF_NOEXIST);
		if (err && err != -WS_EEXIST) {
			lose(LOSS_MAP_FULL);
			return;
		}
		h = bpf_map_lookup_elem(&dev_hist_spill, &dev);
		if (!h)
			return;
	}
	__sync_fetch_and_add(&h->sum_ns, ns);
	__u64 slot = hist_slot(ns);
	asm volatile("" : "+r"(slot));
	if (slot < HIST_SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	__u64 *m = &h->max_ns[bpf_get_smp_processor_id() & (DEV_MAX_CPUS - 1)];
	if (ns > *m)
		*m = ns;
}

/* dev_hist_add records one latency for a device. */
static __always_inline void dev_hist_add(__u32 dev, struct gendisk *disk, __u64 ns)
{
	struct dev_hist *h = bpf_map_lookup_elem(&dev_hist, &dev);
	if (!h) {
		/* First latency of this device (rare, so the cost is fine). */
		__u32 zero = 0;
		struct dev_hist_shared *z = bpf_map_lookup_elem(&dev_hist_zero, &zero);
		if (!z)
			return;
		long err = bpf_map_update_elem(&dev_hist, &dev, z, BPF_NOEXIST);
		if (!err)
			dev_name_add(dev, disk);
		h = bpf_map_lookup_elem(&dev_hist, &dev);
		if (!h) {
			if (err && err != -WS_EEXIST)
				dev_name_add(dev, disk);
			dev_hist_spill_add(dev, ns);
			return;
		}
	}
	/* This CPU's copy: plain adds. A program does not run nested in
	 * itself on one CPU (since 6.1; before, an interrupt's completion
	 * could in rare cases race a task's and lose one count). */
	h->sum_ns += ns;
	/* A 64-bit index compared as such: verifiers before 5.13 do not carry
	 * a 32-bit compare's bound over to the 64-bit register. */
	__u64 slot = hist_slot(ns);
	asm volatile("" : "+r"(slot));
	if (slot < HIST_SLOTS)
		h->slots[slot]++;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

/* A table of spans in flight, by a pointer (bio, request): a direct-mapped
 * array, cheaper than a hash map on every I/O. A span whose slot another
 * span takes before it ends is lost (LOSS_MAP_FULL); each span checks the
 * slot still holds its pointer. SLOT_BITS is set by the includer. */
#ifdef SLOT_BITS
/* The block probes' per-CPU word (one entry, of every CPU):
 *   - rq and now: block_rq_complete's chain reads the clock once. Its
 *     first program (the submit probe's sub_rq_done) notes the request
 *     completing and the time here before it tail-calls the next
 *     (probes/rqchain.go); the service probe's svc_rq_complete takes that
 *     time when the request is its own, and empties rq. A program on a
 *     link of its own (the chain's fallback), or a completion nested in
 *     another on the same CPU, finds another request (or none) here and
 *     reads its own clock. User space gives the submit and service probes
 *     one map (MapReplacements), emptied at each start: a chain of the
 *     submit and devfault programs alone leaves its last request here.
 *   - scratch: ptr_bits. */
struct rq_clock {
	__u64 rq; /* struct request * whose completion now is, 0: none */
	__u64 now;
	__u64 scratch;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rq_clock);
} rq_clock SEC(".maps");

/* 1: ptr_bits stores a pointer into a map value and loads it back, which
 * the verifier allows a loader with CAP_PERFMON (allow_ptr_leaks; tracing
 * programs need it anyway), and the load is a plain number; 0: one
 * bpf_probe_read_kernel of the pointer's own bits (set by user space when
 * a kernel's verifier refuses the store). */
volatile const __u8 ptr_by_map = 1;

/* rq_clock_get returns this CPU's struct rq_clock (NULL: never, in
 * practice; ptr_bits then takes the helper). */
static __always_inline struct rq_clock *rq_clock_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&rq_clock, &zero);
}

/* ptr_bits returns a pointer's value as a number: the verifier allows no
 * arithmetic on a trusted pointer. With c (ptr_by_map), p goes through
 * c->scratch: two plain memory operations instead of a helper call. A
 * program nested on this CPU (an interrupt's) may write scratch between
 * the two: the compare with p (a pointer compare, allowed like the store)
 * catches it, and the helper is taken then. */
static __always_inline __u64 ptr_bits(const void *p, struct rq_clock *c)
{
	__u64 v = 0;

	if (ptr_by_map && c) {
		/* c itself with the field's offset: an address computed
		 * from c could be hoisted above its null test, which
		 * verifiers before 5.13 or so refuse. */
		asm volatile("*(u64 *)(%[c] + %[off]) = %[p]\n\t"
			     "%[v] = *(u64 *)(%[c] + %[off])"
			     : [v] "=r"(v)
			     : [c] "r"(c), [p] "r"(p), [off] "i"(__builtin_offsetof(struct rq_clock, scratch))
			     : "memory");
		if (v == (__u64)p)
			return v;
	}
	bpf_probe_read_kernel(&v, sizeof(v), &p);
	return v;
}

/* ptr_put stores pointer p's value at dst (in a map value), as ptr_bits
 * would return it. */
static __always_inline void ptr_put(__u64 *dst, const void *p, struct rq_clock *c)
{
	if (ptr_by_map)
		asm volatile("*(u64 *)(%[d] + 0) = %[p]" : : [d] "r"(dst), [p] "r"(p) : "memory");
	else
		*dst = ptr_bits(p, c);
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

/* raw_arg returns argument idx (0..2) of a raw_tp program: a pointer's
 * value as a plain number (raw tracepoint arguments are not typed), for
 * the programs that only need it as a key. */
static __always_inline __u64 raw_arg(__u64 *ctx, __u32 idx)
{
	return (__u64)tp_arg(ctx, idx);
}

#endif
