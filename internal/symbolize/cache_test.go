package symbolize

import (
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
)

// tableOf makes a binary of n function symbols with names of nameLen bytes.
func tableOf(n, nameLen int) *binary {
	b := newSymtabBuilder(n, n*nameLen)
	for i := range n {
		b.add(uint64(0x1000+i*0x10), fmt.Sprintf("%0*d", nameLen, i))
	}
	return &binary{syms: b.done(), sizes: make([]uint32, n)}
}

// TestBinariesByteBound reads binaries of many sizes through a cache
// bounded in bytes: the tables kept never add up to more than the bound,
// the most recently used stay, and a table larger than the bound on its
// own is still returned, but not kept.
func TestBinariesByteBound(t *testing.T) {
	small := tableOf(1000, 20)    // some 32 KB
	large := tableOf(200_000, 40) // some 10 MB
	type read struct {
		key string
		b   *binary
	}
	many := func(n int, b *binary) []read {
		var out []read
		for i := range n {
			out = append(out, read{fmt.Sprintf("lib%d", i), b})
		}
		return out
	}
	tests := []struct {
		name     string
		maxBytes int
		reads    []read
		kept     []string // keys cached at the end, most recent first
		uncached int
	}{
		{"many small, under the bound", 1 << 20, many(10, small),
			[]string{"lib9", "lib8", "lib7", "lib6", "lib5", "lib4", "lib3", "lib2", "lib1", "lib0"}, 0},
		{"many small, over the bound: the most recent stay", 4 * small.bytes(), many(10, small),
			[]string{"lib9", "lib8", "lib7", "lib6"}, 0},
		{"one read again is recent", 3 * small.bytes(),
			append(many(3, small), read{"lib0", small}, read{"lib3", small}),
			[]string{"lib3", "lib0", "lib2"}, 0},
		{"one huge binary: used, not kept, the others stay", 1 << 20,
			append(many(3, small), read{"huge", large}, read{"huge", large}),
			[]string{"lib2", "lib1", "lib0"}, 2},
		{"a large one evicts as many small as it needs", large.bytes() + 2*small.bytes(),
			append(many(4, small), read{"large", large}),
			[]string{"large", "lib3", "lib2"}, 0},
		{"failures cost little and are kept", 4 * small.bytes(),
			[]read{{"gone", nil}, {"lib0", small}, {"lib1", small}},
			[]string{"lib1", "lib0", "gone"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := newBinaries(defaultMaxBinaries, tt.maxBytes)
			for _, r := range tt.reads {
				if got := bs.getKey(r.key, func() *binary { return r.b }); got != r.b {
					t.Fatalf("getKey(%s) returned another table", r.key)
				}
				if bs.cache.cost > tt.maxBytes {
					t.Fatalf("after %s: %d bytes kept, bound %d", r.key, bs.cache.cost, tt.maxBytes)
				}
			}
			var kept []string
			sum := 0
			for e := bs.cache.order.Front(); e != nil; e = e.Next() {
				k := e.Value.(string)
				kept = append(kept, k)
				sum += bs.cache.items[k].v.bytes()
			}
			if !reflect.DeepEqual(kept, tt.kept) {
				t.Errorf("kept %v, want %v", kept, tt.kept)
			}
			if sum != bs.cache.cost {
				t.Errorf("accounted %d bytes, the tables kept are %d", bs.cache.cost, sum)
			}
			if bs.uncached != tt.uncached {
				t.Errorf("%d reads not kept, want %d", bs.uncached, tt.uncached)
			}
		})
	}
}

// TestBinaryBytes checks the accounted size of a table against what it
// keeps on the heap.
func TestBinaryBytes(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b := tableOf(100_000, 30)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int(after.HeapAlloc) - int(before.HeapAlloc)
	if got := b.bytes(); got < heap*9/10 || got > heap*11/10 {
		t.Errorf("accounted %d bytes, the heap grew by %d", got, heap)
	}
	runtime.KeepAlive(b)
}

// TestUserCacheBinaryOverBound resolves this process's stacks with a cache
// whose byte bound is smaller than any table: every frame keeps its
// symbol, and nothing is kept.
func TestUserCacheBinaryOverBound(t *testing.T) {
	c := NewUserCache("/proc", 2, 4)
	c.bins = newBinaries(4, 1)
	pc := uint64(reflect.ValueOf(markerFunction).Pointer())
	pc2 := uint64(reflect.ValueOf(TestUserCacheBinaryOverBound).Pointer())
	want := runtime.FuncForPC(uintptr(pc)).Name()
	want2 := runtime.FuncForPC(uintptr(pc2)).Name()
	for range 2 {
		fr, err := c.Frames(uint32(os.Getpid()), []uint64{pc, pc2 + 1})
		if err != nil || fr[0].Symbol != want || fr[1].Symbol != want2 {
			t.Fatalf("Frames = %+v, %v; want %s and %s", fr, err, want, want2)
		}
	}
	if n := c.bins.cache.len(); n != 0 {
		t.Errorf("%d binaries kept, bound is 1 byte", n)
	}
	// One read a stack, not one a frame.
	if c.bins.uncached != 2 {
		t.Errorf("%d reads not kept, want 2 (one a stack)", c.bins.uncached)
	}
	if !strings.Contains(want, "markerFunction") {
		t.Errorf("want %q", want)
	}
}

// TestFrameNamesDoNotPinTables checks that a frame's symbol is not a slice
// of its binary's table, which would keep the whole table alive after the
// cache dropped it.
func TestFrameNamesDoNotPinTables(t *testing.T) {
	bs := newBinaries(4, DefaultMaxSymbolBytes)
	u, err := loadUser("/proc", uint32(os.Getpid()), bs)
	if err != nil {
		t.Fatal(err)
	}
	pc := uint64(reflect.ValueOf(markerFunction).Pointer())
	fr := u.Frame(pc)
	if !strings.Contains(fr.Symbol, "markerFunction") {
		t.Fatalf("Frame = %+v", fr)
	}
	sym := uintptr(unsafe.Pointer(unsafe.StringData(fr.Symbol)))
	for key, it := range bs.cache.items {
		if it.v == nil {
			continue
		}
		names := it.v.syms.names
		lo := uintptr(unsafe.Pointer(unsafe.StringData(names)))
		if sym >= lo && sym < lo+uintptr(len(names)) {
			t.Errorf("the frame's symbol %q is a slice of %s's table of names", fr.Symbol, key)
		}
	}
}

// TestUserCacheRereadsMapsForOutsideAddresses: stacks holding an address in
// no mapping (a return address walked from code without frame pointers)
// read the process's maps again at most once a minMapsReread, not once a
// stack, and the address is resolved once a read after minMapsReread finds
// it mapped (here: a fake clock; the maps of this process do not change).
func TestUserCacheRereadsMapsForOutsideAddresses(t *testing.T) {
	c := NewUserCache("/proc", 2, 4)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	pc := uint64(reflect.ValueOf(markerFunction).Pointer())
	want := runtime.FuncForPC(uintptr(pc)).Name()
	const outside = 8 // in no mapping of any process
	pid := uint32(os.Getpid())
	for _, tc := range []struct {
		after     time.Duration // the clock moves on by it before the stack
		wantReads int           // maps reads so far
	}{
		{0, 1},                           // first: read
		{time.Millisecond, 1},            // outside, read just now: kept
		{minMapsReread / 2, 1},           // still kept
		{minMapsReread, 2},               // outside, read long enough ago: read again
		{time.Millisecond, 2},            // kept again
		{maxMapsAge, 3},                  // too old: read, outside or not
		{minMapsReread + time.Second, 4}, // outside: read again
	} {
		now = now.Add(tc.after)
		fr, err := c.Frames(pid, []uint64{pc, outside})
		if err != nil || fr[0].Symbol != want || fr[1] != (event.Frame{Addr: outside}) {
			t.Fatalf("Frames = %+v, %v; want %s and the address alone", fr, err, want)
		}
		if c.mapsReads != tc.wantReads {
			t.Errorf("after %v: %d reads of the maps, want %d", tc.after, c.mapsReads, tc.wantReads)
		}
	}
	// Inside only: no read before maxMapsAge.
	reads := c.mapsReads
	for range 100 {
		now = now.Add(maxMapsAge / 200)
		if _, err := c.Frames(pid, []uint64{pc}); err != nil {
			t.Fatal(err)
		}
	}
	if c.mapsReads != reads {
		t.Errorf("%d reads of the maps for stacks inside them within %v, want none", c.mapsReads-reads, maxMapsAge/2)
	}
}
