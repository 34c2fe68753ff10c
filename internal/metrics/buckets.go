package metrics

import "github.com/whyslow/whyslow/internal/hist"

// Bucket bounds of the latency histograms: the in-kernel histograms have
// log-linear slots (hist: powers of two split in 8), whose edges include
// every power of two from 8 ns on. Each Prometheus bucket ends at one of
// them, 2^k ns for k = MinBucketLog2..MaxBucketLog2 (about 1 µs to 34 s),
// so that every slot lies wholly below or wholly above each bucket's
// bound, and a bucket's cumulative count is exact: the count of the
// values below 2^k ns, that is at most 2^k − 1 ns, which is its `le`
// (values are whole nanoseconds). Nothing is interpolated or spread.
const (
	MinBucketLog2 = 10 // 1.023 µs
	MaxBucketLog2 = 35 // 34.36 s
)

// BucketBounds are the `le` of the buckets, in seconds: (2^k − 1) ns.
func BucketBounds() []float64 {
	out := make([]float64, 0, MaxBucketLog2-MinBucketLog2+1)
	for k := MinBucketLog2; k <= MaxBucketLog2; k++ {
		out = append(out, float64(uint64(1)<<k-1)/1e9)
	}
	return out
}

// Buckets maps a log-linear histogram (nanoseconds) to Prometheus's form:
// the cumulative count at each bound of BucketBounds, the count and the
// sum in seconds. The count of +Inf is the histogram's count.
func Buckets(h *hist.Histogram) (count uint64, sum float64, buckets map[float64]uint64) {
	bounds := BucketBounds()
	buckets = make(map[float64]uint64, len(bounds))
	var cum uint64
	slot := 0
	for i, b := range bounds {
		edge := uint64(1) << (MinBucketLog2 + i) // the slots below it end at or before it
		for slot < len(h.Counts) {
			lo, _ := hist.Bounds(slot)
			if lo >= edge {
				break
			}
			cum += h.Counts[slot]
			slot++
		}
		buckets[b] = cum
	}
	return h.Count, float64(h.SumNs) / 1e9, buckets
}
