/* Latency histogram slots shared with Go (package hist): log2 buckets split
 * into 2^HIST_SUB_BITS linear sub-buckets. Keep in sync with hist/hist.go. */
#ifndef WHYSLOW_HIST_H
#define WHYSLOW_HIST_H

#define HIST_SUB_BITS 3
#define HIST_MAX_LOG2 40
#define HIST_SLOTS ((HIST_MAX_LOG2 + 1) << HIST_SUB_BITS)

static __always_inline __u32 hist_log2(__u64 v)
{
	__u32 r = 0, s;
	s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
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
