// Package escape makes strings that come from the observed host (task
// names, arguments, paths, device names, uevent fields, frames) safe to
// print: on a terminal, in a text or Markdown report, on stderr. Such a
// string may hold anything: ANSI escape sequences that recolor or clear a
// terminal, newlines that start a line of their own (a forged finding),
// bidi overrides that reverse what follows, invalid UTF-8. String gives
// every one of those a visible escape, so that a host string always prints
// as one run of visible text on the line it was put on.
//
// Every output of whyslow that is not JSON goes through String (JSON
// keeps host strings as data, escaped as JSON escapes them); HTML escapes
// its result again for HTML.
package escape

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every rune that is not graphic (letters, marks,
// numbers, punctuation, symbols and spaces) written as an escape: `\n`,
// `\t` and `\r`; `\xNN` for the other ASCII controls; `\uNNNN` (or
// `\UNNNNNNNN`) for other runes such as C1 controls, bidi overrides,
// line separators, private-use and unassigned runes; and `\xNN` for each
// byte that is not UTF-8 (always 0x80 or above, so that no escape is
// ambiguous). U+FFFD itself is escaped too, so what looks like a
// replacement character always was one in the data. Backslashes are kept
// as they are. A string that needs no escape is returned as is.
func String(s string) string {
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !keep(r) {
			break
		}
		i += size
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\x`)
			b.WriteString(hex2(s[i]))
		case keep(r):
			b.WriteString(s[i : i+size])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < utf8.RuneSelf:
			b.WriteString(`\x`)
			b.WriteString(hex2(byte(r)))
		case r <= 0xffff:
			b.WriteString(`\u`)
			b.WriteString(pad(strconv.FormatUint(uint64(r), 16), 4))
		default:
			b.WriteString(`\U`)
			b.WriteString(pad(strconv.FormatUint(uint64(r), 16), 8))
		}
		i += size
	}
	return b.String()
}

// keep reports whether a rune prints as itself: a graphic rune that is
// not U+FFFD. Graphic runes are Unicode's letters, marks, numbers,
// punctuation, symbols and space separators; not controls, formatting
// runes (bidi overrides, zero-width joiners), line and paragraph
// separators, private-use, surrogate or unassigned runes.
func keep(r rune) bool {
	if r < utf8.RuneSelf {
		return r >= 0x20 && r < 0x7f
	}
	return r != utf8.RuneError && unicode.IsGraphic(r)
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&0xf]})
}

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return strings.Repeat("0", n-len(s)) + s
}

// Lines escapes each line of s (split at '\n') with String and joins
// them again with '\n': text made of several lines, such as a list of
// errors one per line, keeps its lines while what is inside each one is
// escaped. Carriage returns and every other control are escaped.
func Lines(s string) string {
	if !strings.Contains(s, "\n") {
		return String(s)
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = String(l)
	}
	return strings.Join(lines, "\n")
}
