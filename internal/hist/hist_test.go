package hist

import (
	"math"
	"testing"
	"time"
)

func TestSlotBoundsRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 12345, 1 << 20, 999999999, 1 << 39, 1<<40 - 1} {
		s := Slot(v)
		lo, hi := Bounds(s)
		if v < lo || v >= hi {
			t.Errorf("Slot(%d)=%d with bounds [%d,%d) does not hold the value", v, s, lo, hi)
		}
	}
}

func TestSlotsAreMonotonic(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<16; v++ {
		s := Slot(v)
		if s < prev {
			t.Fatalf("Slot(%d)=%d < previous slot %d", v, s, prev)
		}
		prev = s
	}
}

func TestSlotClampsHugeValues(t *testing.T) {
	if got := Slot(1 << 62); got != Slots-1 {
		t.Fatalf("Slot(2^62) = %d, want last slot %d", got, Slots-1)
	}
}

func TestQuantile(t *testing.T) {
	tests := []struct {
		name   string
		values []uint64
		q      float64
		want   time.Duration
		tol    float64
	}{
		{"empty", nil, 0.5, 0, 0},
		{"single", []uint64{1000000}, 0.99, time.Millisecond, 0.125},
		{"median of uniform", seq(1, 10000), 0.5, 5000, 0.125},
		{"p99 of uniform", seq(1, 10000), 0.99, 9900, 0.125},
		{"never above max", []uint64{1000, 1001}, 1, 1001, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, v := range tt.values {
				h.Add(v)
			}
			got := h.Quantile(tt.q)
			diff := float64(got - tt.want)
			if diff < 0 {
				diff = -diff
			}
			if diff > tt.tol*float64(tt.want) {
				t.Fatalf("Quantile(%v) = %v, want %v within %.0f%%", tt.q, got, tt.want, tt.tol*100)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	var a, b Histogram
	a.Add(10)
	b.Add(1000)
	b.Add(20)
	a.Merge(&b)
	if a.Count != 3 || a.MaxNs != 1000 || a.SumNs != 1030 {
		t.Fatalf("merged = count %d max %d sum %d, want 3 1000 1030", a.Count, a.MaxNs, a.SumNs)
	}
}

func seq(from, to uint64) []uint64 {
	var out []uint64
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

// Values beyond what a time.Duration holds (a histogram read from a file
// can have them) give the largest duration, never a negative one.
func TestHugeValuesStayPositive(t *testing.T) {
	tests := []struct {
		name string
		h    Histogram
		mean time.Duration
		max  time.Duration
	}{
		{"max beyond a Duration", Histogram{Count: 1, SumNs: 5, MaxNs: math.MaxUint64}, 5, math.MaxInt64},
		{"mean beyond a Duration", Histogram{Count: 1, SumNs: math.MaxUint64, MaxNs: 10}, math.MaxInt64, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.Mean(); got != tt.mean {
				t.Errorf("Mean = %v, want %v", got, tt.mean)
			}
			if got := tt.h.Quantile(1); got != tt.max {
				t.Errorf("Quantile(1) = %v, want %v", got, tt.max)
			}
		})
	}
}
