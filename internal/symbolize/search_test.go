package symbolize

import (
	"reflect"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

func TestSymbolAt(t *testing.T) {
	type sym struct {
		at   uint64
		name string
	}
	start := func(s sym) uint64 { return s.at }
	syms := []sym{{0x100, "a"}, {0x200, "b"}, {0x200, "b_alias"}, {0x200, "b_alias2"}, {0x300, "c"}}
	tests := []struct {
		name string
		syms []sym
		addr uint64
		want string // "" when no symbol holds addr
	}{
		{"no symbols", nil, 0x100, ""},
		{"below the first", syms, 0xff, ""},
		{"zero", syms, 0, ""},
		{"at the first's start", syms, 0x100, "a"},
		{"inside the first", syms, 0x1ff, "a"},
		{"at aliases: the first listed", syms, 0x200, "b"},
		{"past aliases: the first listed", syms, 0x2ff, "b"},
		{"at the last", syms, 0x300, "c"},
		{"past the last: sizes are the caller's", syms, ^uint64(0), "c"},
		{"one symbol", syms[:1], 0x150, "a"},
		{"aliases first", []sym{{0x10, "x"}, {0x10, "y"}}, 0x10, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			starts := make([]uint64, len(tt.syms))
			for i, s := range tt.syms {
				starts[i] = start(s)
			}
			if i := symbolAt(starts, tt.addr); i >= 0 {
				got = tt.syms[i].name
			}
			if got != tt.want {
				t.Errorf("symbolAt(%#x) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

func TestStackFrames(t *testing.T) {
	// frame reports the address it was asked to look up as the offset.
	frame := func(addr, lookup uint64) event.Frame {
		return event.Frame{Addr: addr, Offset: lookup}
	}
	tests := []struct {
		name    string
		addrs   []uint64
		lookups []uint64
	}{
		{"empty", nil, nil},
		{"the innermost as it is", []uint64{0x100}, []uint64{0x100}},
		{"return addresses one byte earlier", []uint64{0x100, 0x200, 0x300}, []uint64{0x100, 0x1ff, 0x2ff}},
		{"a zero return address as it is", []uint64{0x100, 0}, []uint64{0x100, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := stackFrames(tt.addrs, frame)
			want := make([]event.Frame, 0, len(tt.addrs))
			for i, a := range tt.addrs {
				want = append(want, event.Frame{Addr: a, Offset: tt.lookups[i]})
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("stackFrames(%#x) = %+v, want %+v", tt.addrs, got, want)
			}
		})
	}
}
