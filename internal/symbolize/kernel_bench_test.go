package symbolize

import (
	"bytes"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
)

// benchKallsyms returns the running kernel's kallsyms when its addresses
// are visible (root), else the small file of testdata.
func benchKallsyms(b *testing.B) []byte {
	b.Helper()
	if data, err := readProcFile("/proc/kallsyms"); err == nil && KernelAddressesVisible("/proc") == nil {
		return data
	}
	data, err := os.ReadFile("testdata/kallsyms")
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkKernelFrame resolves random addresses inside the kernel's text
// symbols, one at a time.
func BenchmarkKernelFrame(b *testing.B) {
	k, err := ParseKallsyms(bytes.NewReader(benchKallsyms(b)))
	if err != nil {
		b.Fatal(err)
	}
	lo, _ := k.Addr("_stext")
	hi, _ := k.Addr("_etext")
	if hi <= lo {
		lo, hi = 0xffffffff81000000, 0xffffffff81001000
	}
	r := rand.New(rand.NewPCG(1, 2))
	addrs := make([]uint64, 4096)
	for i := range addrs {
		addrs[i] = lo + r.Uint64N(hi-lo)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if f := k.Frame(addrs[i%len(addrs)]); f.Addr == 0 {
			b.Fatal("no frame")
		}
	}
}

// BenchmarkParseKallsyms parses kallsyms and reports the bytes the parsed
// table keeps on the heap (retained-B) beside the time and allocations.
func BenchmarkParseKallsyms(b *testing.B) {
	data := benchKallsyms(b)
	var keep *Kernel
	var retained uint64
	for i := 0; i < b.N; i++ {
		keep = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		k, err := ParseKallsyms(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		keep = k
		runtime.GC()
		runtime.ReadMemStats(&after)
		retained = after.HeapAlloc - before.HeapAlloc
	}
	runtime.KeepAlive(keep)
	b.ReportMetric(float64(retained), "retained-B")
}
