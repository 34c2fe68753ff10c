package event

import (
	"reflect"
	"testing"
)

func TestFormatStack(t *testing.T) {
	tests := []struct {
		name string
		in   []Frame
		want []string
	}{
		{"nil stack: empty, not nil", nil, []string{}},
		{"kernel proper", []Frame{{Addr: 0xffffffff81000010, Symbol: "io_schedule", Offset: 0x10, Module: "kernel"}}, []string{"io_schedule+0x10"}},
		{"kernel module", []Frame{{Addr: 0xffffffffc0001000, Symbol: "bch_data_insert", Offset: 0x3c, Module: "bcache"}}, []string{"bch_data_insert+0x3c [bcache]"}},
		{"user binary: its base name", []Frame{{Addr: 0x7f0000001000, Symbol: "pwrite64", Offset: 0x47, Module: "/usr/lib/x86_64-linux-gnu/libc.so.6"}}, []string{"pwrite64+0x47 [libc.so.6]"}},
		{"symbol without module", []Frame{{Addr: 0x1000, Symbol: "f", Offset: 0}}, []string{"f+0x0"}},
		{"no symbol: module and address, no brackets", []Frame{{Addr: 0x401000, Module: "/usr/bin/app"}}, []string{"/usr/bin/app+0x401000"}},
		{"nothing but the address", []Frame{{Addr: 0x401000}}, []string{"0x401000"}},
		{"order kept", []Frame{{Addr: 1}, {Addr: 2}}, []string{"0x1", "0x2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FormatStack(tt.in)
			if got == nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FormatStack = %#v, want %#v", got, tt.want)
			}
		})
	}
}
