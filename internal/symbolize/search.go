package symbolize

import (
	"github.com/whyslow/whyslow/internal/event"
)

// symbolAt returns the index in starts, sorted start addresses, of the
// symbol that holds addr: the last one to start at or below addr, the first
// listed of those that start at that same address (aliases); -1 when addr
// lies below every symbol. Sizes are the caller's to check.
func symbolAt(starts []uint64, addr uint64) int {
	// The first start above addr, by halves (sort.Search without its
	// function call per step).
	lo, hi := 0, len(starts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if starts[m] > addr {
			hi = m
		} else {
			lo = m + 1
		}
	}
	i := lo - 1
	if i < 0 {
		return -1
	}
	// The first of the symbols starting where symbol i starts.
	at := starts[i]
	lo, hi = 0, i
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if starts[m] >= at {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// stackFrames resolves a stack, innermost first, with frame(addr, lookup).
// Every address but the first is a return address, looked up one byte
// earlier so that a call at the very end of a function (a noreturn call)
// resolves to that function and not to the next; the frame still shows the
// address itself.
func stackFrames(addrs []uint64, frame func(addr, lookup uint64) event.Frame) []event.Frame {
	out := make([]event.Frame, 0, len(addrs))
	for i, a := range addrs {
		lookup := a
		if i > 0 && a > 0 {
			lookup = a - 1
		}
		out = append(out, frame(a, lookup))
	}
	return out
}
