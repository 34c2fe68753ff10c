/* Latency histogram slots shared with Go (internal/hist): log2 buckets
 * split into 2^HIST_SUB_BITS linear sub-buckets. Go mirrors the constants
 * (hist.SubBits, MaxLog2, Slots: probes/mirror_test.go compares them with
 * this enum in the objects' BTF) and hist_slot (hist.Slot: TestSlotMatchesC
 * in probes/histslot_test.go runs this one in the kernel). Include after
 * common.h. */
#ifndef WHYSLOW_HIST_H
#define WHYSLOW_HIST_H

enum hist_layout {
	HIST_SUB_BITS = 3,
	HIST_MAX_LOG2 = 40,
	HIST_SLOTS = (HIST_MAX_LOG2 + 1) << HIST_SUB_BITS,
};

KEEP_TYPE(enum hist_layout, hist_layout_type);

/* nonzero returns 1 when x is not 0, else 0, with no branch: BPF has no
 * set-on-compare, so `x != 0` is a jump, and the verifier walks what
 * follows once for each way (see hist_log2). The barrier keeps the
 * compiler from turning it back into the compare. */
static __always_inline __u64 nonzero(__u64 x)
{
	__u64 n = -x;

	asm volatile("" : "+r"(n));
	return (x | n) >> 63;
}

/* hist_log2 returns floor(log2(v)) (0 for 0) with no branch: written
 * with compares, its five steps made 32 paths that the verifier could not
 * tell apart (the slot indexes a map value, so every bit of it is
 * tracked), each walking the rest of its program. */
static __always_inline __u32 hist_log2(__u64 v)
{
	__u32 r = 0, s;
	s = nonzero(v >> 32) << 5; v >>= s; r |= s;
	s = nonzero(v >> 16) << 4; v >>= s; r |= s;
	s = nonzero(v >> 8) << 3; v >>= s; r |= s;
	s = nonzero(v >> 4) << 2; v >>= s; r |= s;
	s = nonzero(v >> 2) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 hist_slot(__u64 ns)
{
	__u32 l, s;
	__u64 sub;

	if (ns < (1 << HIST_SUB_BITS))
		return (__u32)ns;
	l = hist_log2(ns);
	sub = (ns >> (l - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1);
	s = ((l - HIST_SUB_BITS + 1) << HIST_SUB_BITS) + (__u32)sub;
	if (s >= HIST_SLOTS)
		s = HIST_SLOTS - 1;
	return s;
}

#endif
