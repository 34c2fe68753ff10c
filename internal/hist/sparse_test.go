package hist

import (
	"reflect"
	"testing"
)

func histOf(ns ...uint64) Histogram {
	var h Histogram
	for _, v := range ns {
		h.Add(v)
	}
	return h
}

// A Sparse histogram answers as the whole one it was made of, and
// merges as it does.
func TestSparseIsTheHistogram(t *testing.T) {
	tests := []struct {
		name string
		a, b Histogram
	}{
		{"empty", Histogram{}, Histogram{}},
		{"one value", histOf(1000), Histogram{}},
		{"into empty", Histogram{}, histOf(5, 7, 1<<20)},
		{"overlapping slots", histOf(1000, 1001, 50000, 1<<30), histOf(1000, 2000, 1<<30, 1<<39)},
		{"disjoint", histOf(1, 2, 3), histOf(1 << 35)},
		{"past the last slot", histOf(1 << 62), histOf(1<<62, 9)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sa, sb := Compact(&tt.a), Compact(&tt.b)
			if got := sa.Full(); got != tt.a {
				t.Fatalf("Compact then Full: %+v, want %+v", got.Counts, tt.a.Counts)
			}
			for i := 1; i < len(sa.Slots); i++ {
				if sa.Slots[i-1].Slot >= sa.Slots[i].Slot || sa.Slots[i].Count == 0 {
					t.Fatalf("slots not increasing and non-empty: %v", sa.Slots)
				}
			}
			whole := tt.a
			whole.Merge(&tt.b)
			merged := sa
			merged.Merge(&sb)
			if got := merged.Full(); got != whole {
				t.Fatalf("Merge: %+v, want %+v", got, whole)
			}
			if again := Compact(&tt.a); !reflect.DeepEqual(again, sa) {
				t.Fatalf("Merge wrote the sparse histogram merged into: %v, was %v", sa, again)
			}
			added := tt.a
			sb.AddTo(&added)
			if added != whole {
				t.Fatalf("AddTo: %+v, want %+v", added, whole)
			}
			for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 1} {
				if got, want := merged.Quantile(q), whole.Quantile(q); got != want {
					t.Errorf("Quantile(%v) = %v, want %v", q, got, want)
				}
			}
			if got, want := merged.Mean(), whole.Mean(); got != want {
				t.Errorf("Mean = %v, want %v", got, want)
			}
		})
	}
}

// CompactSlots reads a kernel map's counts as AddN would add them.
func TestCompactSlots(t *testing.T) {
	counts := make([]uint64, Slots+2)
	counts[3], counts[100], counts[Slots-1], counts[Slots+1] = 2, 5, 1, 9
	s := CompactSlots(counts, 777, 1<<40)
	var want Histogram
	for i, c := range counts {
		want.AddN(i, c)
	}
	want.SumNs, want.MaxNs = 777, 1<<40
	if got := s.Full(); got != want || s.Count != 8 {
		t.Fatalf("CompactSlots: count %d, %+v; want 8, %+v", s.Count, got, want)
	}
	if s := CompactSlots(make([]uint64, Slots), 0, 0); s.Slots != nil || s.Count != 0 {
		t.Fatalf("CompactSlots of nothing: %+v", s)
	}
}
