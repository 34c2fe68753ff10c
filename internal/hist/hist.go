// Package hist is the latency histogram shared by the BPF programs and Go:
// log2 buckets, each split into 2^SubBits linear sub-buckets, so that a
// quantile read from it is within 1/2^SubBits (12.5%) of the true value.
//
// The BPF programs fill these histograms with the same constants and slot
// computation in C (bpf/include/hist.h). Two tests in package probes keep
// the two equal: TestGoMirrorsC compares SubBits, MaxLog2 and Slots with the
// compiled objects' BTF, and TestSlotMatchesC (probes/histslot_test.go) runs
// the C hist_slot in the kernel against Slot.
package hist

import (
	"iter"
	"math"
	"math/bits"
	"slices"
	"time"
)

// SubBits is the number of linear sub-bucket bits per power of two.
const SubBits = 3

// Slots is the number of slots: values up to 2^MaxLog2 ns (~18 minutes).
const (
	MaxLog2 = 40
	Slots   = (MaxLog2 + 1) << SubBits
)

// Slot returns the slot of a value in nanoseconds.
func Slot(ns uint64) int {
	if ns < 1<<SubBits {
		return int(ns)
	}
	l := 63 - bits.LeadingZeros64(ns) // floor(log2(ns)) >= SubBits
	sub := (ns >> (uint(l) - SubBits)) & (1<<SubBits - 1)
	s := (l-SubBits+1)<<SubBits + int(sub)
	if s >= Slots {
		return Slots - 1
	}
	return s
}

// Bounds returns the smallest value in a slot and the smallest value of the next slot.
func Bounds(slot int) (lo, hi uint64) {
	if slot < 1<<SubBits {
		return uint64(slot), uint64(slot) + 1
	}
	l := slot>>SubBits + SubBits - 1
	sub := uint64(slot & (1<<SubBits - 1))
	lo = (1<<SubBits | sub) << uint(l-SubBits)
	hi = lo + 1<<uint(l-SubBits)
	return lo, hi
}

// Histogram is a latency distribution in nanoseconds.
type Histogram struct {
	Counts [Slots]uint64
	Count  uint64 // total count
	SumNs  uint64
	MaxNs  uint64
}

// Add records one value.
func (h *Histogram) Add(ns uint64) {
	h.AddN(Slot(ns), 1)
	h.SumNs += ns
	if ns > h.MaxNs {
		h.MaxNs = ns
	}
}

// AddN adds n values to a slot, without touching sum and max.
func (h *Histogram) AddN(slot int, n uint64) {
	if slot < 0 || slot >= Slots {
		return
	}
	h.Counts[slot] += n
	h.Count += n
}

// Merge adds o into h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.Count += o.Count
	h.SumNs += o.SumNs
	if o.MaxNs > h.MaxNs {
		h.MaxNs = o.MaxNs
	}
}

// Quantile returns an estimate of the q-quantile (0 < q <= 1): the midpoint
// of the slot holding it, never above the recorded maximum.
func (h *Histogram) Quantile(q float64) time.Duration {
	return quantile(q, h.Count, h.MaxNs, slices.All(h.Counts[:]))
}

// quantile is the q-quantile of count values, with the largest maxNs, whose
// slots and counts slots yields in slot order: the midpoint of the slot
// holding it, never above maxNs. Histogram and Sparse share it.
func quantile(q float64, count, maxNs uint64, slots iter.Seq2[int, uint64]) time.Duration {
	if count == 0 {
		return 0
	}
	rank := uint64(q*float64(count) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank >= count && maxNs > 0 {
		return duration(maxNs)
	}
	var seen uint64
	for i, c := range slots {
		seen += c
		if seen >= rank {
			lo, hi := Bounds(i)
			v := lo + (hi-lo)/2
			if maxNs > 0 && v > maxNs {
				v = maxNs
			}
			return duration(v)
		}
	}
	return duration(maxNs)
}

// Mean returns the average, or 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.Count == 0 {
		return 0
	}
	return duration(h.SumNs / h.Count)
}

// duration converts nanoseconds, staying at the largest time.Duration for
// values beyond it rather than turning negative.
func duration(ns uint64) time.Duration {
	if ns > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}
