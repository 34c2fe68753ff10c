package hist

import "time"

// Sparse is a Histogram's non-empty slots only, in slot order: what an
// event keeps of a latency distribution (a process's calls fill a few of
// the Slots, where a Histogram takes 2.6 KB). Count, SumNs and MaxNs are
// the Histogram's, as they were (Count is not recomputed from the slots).
type Sparse struct {
	Slots []SlotCount
	Count uint64 // total count
	SumNs uint64
	MaxNs uint64
}

// SlotCount is one non-empty slot of a Sparse histogram.
type SlotCount struct {
	Slot  uint32
	Count uint64
}

// Compact returns h's non-empty slots as a Sparse histogram.
func Compact(h *Histogram) Sparse {
	s := Sparse{Count: h.Count, SumNs: h.SumNs, MaxNs: h.MaxNs}
	s.Slots = appendSlots(nil, &h.Counts)
	return s
}

// CompactSlots returns a Sparse histogram of counts by slot (a kernel
// map's array; slots beyond Slots are not counted, as AddN), its Count
// their sum.
func CompactSlots(counts []uint64, sumNs, maxNs uint64) Sparse {
	s := Sparse{SumNs: sumNs, MaxNs: maxNs}
	n := 0
	for i, c := range counts {
		if c != 0 && i < Slots {
			n++
		}
	}
	if n > 0 {
		s.Slots = make([]SlotCount, 0, n)
	}
	for i, c := range counts {
		if c != 0 && i < Slots {
			s.Slots = append(s.Slots, SlotCount{uint32(i), c})
			s.Count += c
		}
	}
	return s
}

func appendSlots(dst []SlotCount, counts *[Slots]uint64) []SlotCount {
	n := 0
	for _, c := range counts {
		if c != 0 {
			n++
		}
	}
	if n == 0 {
		return dst
	}
	dst = append(make([]SlotCount, 0, len(dst)+n), dst...)
	for i, c := range counts {
		if c != 0 {
			dst = append(dst, SlotCount{uint32(i), c})
		}
	}
	return dst
}

// Full returns the whole Histogram.
func (s *Sparse) Full() Histogram {
	var h Histogram
	s.AddTo(&h)
	return h
}

// AddTo merges s into h, as h.Merge of s's full Histogram would.
func (s *Sparse) AddTo(h *Histogram) {
	for _, sc := range s.Slots {
		if int(sc.Slot) < Slots {
			h.Counts[sc.Slot] += sc.Count
		}
	}
	h.Count += s.Count
	h.SumNs += s.SumNs
	if s.MaxNs > h.MaxNs {
		h.MaxNs = s.MaxNs
	}
}

// Merge adds o into s, as Histogram.Merge: s's slots are new ones (a
// Sparse shared with others is never written).
func (s *Sparse) Merge(o *Sparse) {
	out := make([]SlotCount, 0, len(s.Slots)+len(o.Slots))
	i, j := 0, 0
	for i < len(s.Slots) || j < len(o.Slots) {
		switch {
		case j == len(o.Slots) || (i < len(s.Slots) && s.Slots[i].Slot < o.Slots[j].Slot):
			out = append(out, s.Slots[i])
			i++
		case i == len(s.Slots) || o.Slots[j].Slot < s.Slots[i].Slot:
			out = append(out, o.Slots[j])
			j++
		default:
			out = append(out, SlotCount{s.Slots[i].Slot, s.Slots[i].Count + o.Slots[j].Count})
			i++
			j++
		}
	}
	if len(out) == 0 {
		out = nil
	}
	s.Slots = out
	s.Count += o.Count
	s.SumNs += o.SumNs
	if o.MaxNs > s.MaxNs {
		s.MaxNs = o.MaxNs
	}
}

// Quantile is Histogram.Quantile of the full histogram.
func (s *Sparse) Quantile(q float64) time.Duration {
	return quantile(q, s.Count, s.MaxNs, func(yield func(int, uint64) bool) {
		for _, sc := range s.Slots {
			if int(sc.Slot) < Slots && !yield(int(sc.Slot), sc.Count) {
				return
			}
		}
	})
}

// Mean is Histogram.Mean.
func (s *Sparse) Mean() time.Duration {
	if s.Count == 0 {
		return 0
	}
	return duration(s.SumNs / s.Count)
}
