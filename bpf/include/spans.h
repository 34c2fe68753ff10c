/* For programs that time spans and stream only the long ones: the threshold,
 * set by user space before loading (Config.MinLatency, as the variable
 * named by minLatencyVar in probes/bpfprobe.go). Include after common.h. */
#ifndef WHYSLOW_SPANS_H
#define WHYSLOW_SPANS_H

/* Spans shorter than this are not streamed. */
volatile const __u64 min_latency_ns = 1000000;

/* long_span reports whether a span of ns nanoseconds is streamed. */
static __always_inline int long_span(__u64 ns)
{
	return ns >= min_latency_ns;
}

#endif
