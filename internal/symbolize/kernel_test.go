package symbolize

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

func TestParseKallsymsFile(t *testing.T) {
	f, err := os.Open("testdata/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k, err := ParseKallsyms(f)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr uint64
		want event.Frame
	}{
		{0xffffffff81000000, event.Frame{Addr: 0xffffffff81000000, Symbol: "_stext", Module: "kernel"}},
		{0xffffffff81000123, event.Frame{Addr: 0xffffffff81000123, Symbol: "helper_one", Offset: 0x23, Module: "kernel"}},
		{0xffffffff8100021f, event.Frame{Addr: 0xffffffff8100021f, Symbol: "blk_mq_freeze_queue_wait", Offset: 0x1f, Module: "kernel"}},
		// Data symbols are skipped: 0x310 is still in blk_mq_freeze_queue_wait.
		{0xffffffff81000310, event.Frame{Addr: 0xffffffff81000310, Symbol: "blk_mq_freeze_queue_wait", Offset: 0x110, Module: "kernel"}},
		{0xffffffff81000501, event.Frame{Addr: 0xffffffff81000501, Symbol: "weak_fn", Offset: 1, Module: "kernel"}},
		{0xffffffffc0201104, event.Frame{Addr: 0xffffffffc0201104, Symbol: "loop_probe", Offset: 4, Module: "loop"}},
		{0xffffffffc0301010, event.Frame{Addr: 0xffffffffc0301010, Symbol: "bch_data_insert", Offset: 0x10, Module: "bcache"}},
		{0x1000, event.Frame{Addr: 0x1000}},
		// Far past the last module's last symbol: code kallsyms did not
		// list (a BPF trampoline made after the read), no name.
		{0xffffffffc0301010 + 0x27647f49, event.Frame{Addr: 0xffffffffc0301010 + 0x27647f49}},
	}
	for _, tt := range tests {
		if got := k.Frame(tt.addr); got != tt.want {
			t.Errorf("Frame(%#x) = %+v, want %+v", tt.addr, got, tt.want)
		}
	}
	// In a stack, return addresses are looked up one byte earlier: a return
	// address right at the start of elv_iosched_store belongs to the caller.
	st := k.Frames([]uint64{0xffffffff81000400, 0xffffffff81000400})
	if st[0].Symbol != "elv_iosched_store" || st[1].Symbol != "blk_mq_freeze_queue_wait" || st[1].Offset != 0x200 {
		t.Errorf("Frames = %+v", st)
	}
}

func TestParseKallsymsErrors(t *testing.T) {
	tests := []struct {
		name, in string
		wantErr  string
		is       error
	}{
		{"all zero", "0000000000000000 T _text\n0000000000000000 t foo\t[loop]\n", "", ErrNoKernelAddresses},
		{"empty", "", "no text symbols", nil},
		{"bad address", "zzzz T foo\n", "kallsyms line 1: address", nil},
		{"too few fields", "ffffffff81000000 T\n", "kallsyms line 1: malformed", nil},
		{"bad type", "ffffffff81000000 TT foo\n", "kallsyms line 1: malformed", nil},
		{"bad module", "ffffffff81000000 t foo\tloop\n", "malformed module", nil},
		{"too many fields", "ffffffff81000000 t foo [a] [b]\n", "malformed", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKallsyms(strings.NewReader(tt.in))
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v, want %v", err, tt.is)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestLoadKernelLive reads the running kernel's symbols (needs root).
func TestLoadKernelLive(t *testing.T) {
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("kallsyms addresses need root (and no -short)")
	}
	k, err := LoadKernel("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if k.Len() < 1000 {
		t.Fatalf("only %d kernel text symbols", k.Len())
	}
	// Every symbol resolves to itself, or to the first alias at its address.
	for i, a := range k.syms.starts[:100] {
		first := i
		for first > 0 && k.syms.starts[first-1] == a {
			first--
		}
		if f := k.Frame(a); f.Offset != 0 || f.Module != KernelModule || f.Symbol != k.syms.name(first) {
			t.Fatalf("Frame(%#x) = %+v, want %s", a, f, k.syms.name(first))
		}
	}
	// Against the file line by line: every text symbol's address resolves
	// to it or to an alias listed before it, in its module.
	data, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	type at struct {
		addr uint64
		mod  string
	}
	names := map[at][]string{}
	checked := 0
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || !strings.ContainsAny(f[1], "tTwW") {
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		mod := KernelModule
		if len(f) == 4 {
			mod = strings.Trim(f[3], "[]")
		}
		if mod == "bpf" {
			// BPF programs and trampolines come and go between the two
			// reads (other packages' tests load them in parallel).
			continue
		}
		names[at{addr, mod}] = append(names[at{addr, mod}], f[2])
		fr := k.Frame(addr)
		if fr.Offset != 0 || !slices.Contains(names[at{addr, fr.Module}], fr.Symbol) {
			t.Fatalf("Frame(%#x) = %+v; kallsyms lists %s [%s] there", addr, fr, f[2], mod)
		}
		checked++
	}
	loaded := 0
	for _, a := range k.syms.starts {
		if k.Frame(a).Module != "bpf" {
			loaded++
		}
	}
	if checked != loaded {
		t.Errorf("%d text symbols outside [bpf] in kallsyms, %d loaded", checked, loaded)
	}
}
