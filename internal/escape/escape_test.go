package escape

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"fio", "fio"},
		{"(udev-worker)", "(udev-worker)"},
		{"a b", "a b"},
		{"über café", "über café"},
		{"日本語", "日本語"},
		{"no\u00a0break", "no\u00a0break"}, // a space separator prints as a space
		{`C:\path\x41`, `C:\path\x41`},     // backslashes stay
		{"tab\there", `tab\there`},
		{"nl\n#1 CRITICAL forged", `nl\n#1 CRITICAL forged`},
		{"cr\r", `cr\r`},
		{"esc\x1b[31mred\x1b[0m", `esc\x1b[31mred\x1b[0m`},
		{"nul\x00del\x7f", `nul\x00del\x7f`},
		{"c1\u0085\u009b", `c1\u0085\u009b`},
		{"bidi\u202eevil", `bidi\u202eevil`},
		{"zw\u200bj\u200d", `zw\u200bj\u200d`},
		{"ls\u2028ps\u2029", `ls\u2028ps\u2029`},
		{"bad\xffutf8\xc3", `bad\xffutf8\xc3`},
		{"replacement \ufffd", `replacement \ufffd`},
		{"private \U000f0000", `private \U000f0000`},
		{"tag \U000e0041", `tag \U000e0041`},
	}
	for _, tt := range tests {
		if got := String(tt.in); got != tt.want {
			t.Errorf("String(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLines(t *testing.T) {
	if got, want := Lines("a.yaml:1:1: x\x1b\nb.yaml:2:2: y\r"), "a.yaml:1:1: x\\x1b\nb.yaml:2:2: y\\r"; got != want {
		t.Errorf("Lines = %q, want %q", got, want)
	}
}

// What String gives is one line of visible runes, whatever it was given,
// and it leaves alone what was visible.
func FuzzString(f *testing.F) {
	for _, s := range []string{"", "fio", "a\nb", "\x1b[2J", "\xff\xfe", "\u202e", "über\u0085", "\\x41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := String(s)
		if !utf8.ValidString(out) {
			t.Fatalf("String(%q) = %q: not UTF-8", s, out)
		}
		for _, r := range out {
			if !keep(r) {
				t.Fatalf("String(%q) = %q holds %U", s, out, r)
			}
		}
		visible := true
		for _, r := range s {
			visible = visible && keep(r)
		}
		if visible && utf8.ValidString(s) && out != s {
			t.Fatalf("String(%q) = %q changed a visible string", s, out)
		}
		if strings.Count(Lines(s), "\n") != strings.Count(s, "\n") {
			t.Fatalf("Lines(%q) changed the number of lines", s)
		}
	})
}
