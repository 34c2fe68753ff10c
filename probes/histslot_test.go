package probes

import (
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/scenario"
)

// TestSlotMatchesC runs hist_slot, the slot computation of the BPF programs
// (bpf/include/hist.h, built for the test as bpf/test/histslot.bpf.c), in
// the kernel on values at and around every bucket edge and on random ones,
// and compares each slot with Go's hist.Slot, by which the histograms the
// programs fill are read. The constants of hist.h are compared without the
// kernel by TestGoMirrorsC.
func TestSlotMatchesC(t *testing.T) {
	if testing.Short() {
		scenario.Skip(t, "skipped with -short: runs a BPF program in the kernel")
	}
	if os.Geteuid() != 0 {
		scenario.Skip(t, "needs root: runs a BPF program in the kernel")
	}
	spec, err := loadHistslot()
	if err != nil {
		t.Fatal(err)
	}
	var objs histslotObjects
	if err := spec.LoadAndAssign(&objs, collectionOptions(nil)); err != nil {
		t.Fatalf("loading hist_slot_of: %v", err)
	}
	defer objs.Close()

	for _, v := range slotProbes() {
		got, err := objs.HistSlotOf.Run(&ebpf.RunOptions{Context: []uint64{v}})
		if err != nil {
			t.Fatalf("running hist_slot_of(%d): %v", v, err)
		}
		if want := hist.Slot(v); int(got) != want {
			t.Errorf("hist_slot(%d) = %d in C, hist.Slot = %d in Go", v, got, want)
		}
	}
}

// slotProbes are the values TestSlotMatchesC asks for: every value below
// 4096 (the linear slots and the first buckets, one by one), each power of
// two and its neighbours up to 2^64-1 (the bucket and sub-bucket edges and
// the clamp past 2^MaxLog2), and random values of every magnitude.
func slotProbes() []uint64 {
	var vs []uint64
	for v := range uint64(4096) {
		vs = append(vs, v)
	}
	for s := range 64 {
		p := uint64(1) << s
		vs = append(vs, p-1, p, p+1)
		// The sub-bucket edges within [p, 2p).
		for sub := uint64(1); sub < 1<<hist.SubBits && s >= hist.SubBits; sub++ {
			e := p + sub<<(s-hist.SubBits)
			vs = append(vs, e-1, e)
		}
	}
	vs = append(vs, math.MaxUint64)
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		vs = append(vs, r.Uint64()>>r.UintN(64))
	}
	return vs
}
