// Package stackexport writes the blocked (off-CPU) stacks of a run for the
// usual stack tools: a pprof profile (gzip-compressed profile.proto, for
// `go tool pprof`) and folded stacks (one "comm;frame;...;frame value" line
// per stack, for flame graph scripts).
//
// Every off-CPU span of the timeline goes in, whatever it was classified as
// (queue enter, queue freeze, tag wait, I/O wait, other): the spans the run
// streamed, that is those longer than its --min-latency. Values are blocked
// time in microseconds and the number of spans.
package stackexport

import (
	"bufio"
	"cmp"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Stack is the blocked spans of one task name with the same frames.
type Stack struct {
	Comm   string
	Kind   string        // facts.Classify of the kernel frames
	Kernel []event.Frame // innermost first
	User   []event.Frame // innermost first
	Count  int64
	Total  time.Duration
}

// Micros is the blocked time in whole microseconds.
func (s Stack) Micros() int64 { return int64(s.Total / time.Microsecond) }

// Stacks groups the timeline's off-CPU spans by task name and frames (by
// symbol, or address when unknown: offsets inside one function do not split
// a group), ordered by blocked time, most first.
func Stacks(tl *timeline.Timeline) []Stack {
	if tl == nil {
		return nil
	}
	idx := map[string]int{}
	var out []Stack
	for _, o := range tl.OffCPU {
		key := o.Task.Comm + "\x00" + frameKey(o.KernelStack) + "\x00" + frameKey(o.UserStack)
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, Stack{Comm: o.Task.Comm, Kind: facts.Classify(o.KernelStack), Kernel: o.KernelStack, User: o.UserStack})
		}
		out[i].Count++
		out[i].Total = facts.SaturatingAdd(out[i].Total, max(o.Duration, 0))
	}
	slices.SortStableFunc(out, func(a, b Stack) int {
		if c := cmp.Compare(b.Total, a.Total); c != 0 {
			return c
		}
		return cmp.Compare(a.Comm, b.Comm)
	})
	return out
}

func frameKey(fs []event.Frame) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(funcName(f))
		b.WriteByte(0)
		b.WriteString(f.Module)
		b.WriteByte(1)
	}
	return b.String()
}

// funcName is the name a frame is shown by: its symbol, else module+0xaddr
// or the bare address.
func funcName(f event.Frame) string {
	switch {
	case f.Symbol != "":
		return f.Symbol
	case f.Module != "":
		return fmt.Sprintf("%s+0x%x", path.Base(f.Module), f.Addr)
	}
	return fmt.Sprintf("0x%x", f.Addr)
}

// Folded writes one line per stack: the task name, the user frames and then
// the kernel frames, outermost first, separated by ';', then a space and the
// blocked microseconds. User frames carry their binary in brackets; names
// are cleaned of ';', spaces at the edges and control characters, so that
// every line parses.
func Folded(w io.Writer, tl *timeline.Timeline) error {
	bw := bufio.NewWriter(w)
	for _, s := range Stacks(tl) {
		parts := []string{foldName(s.Comm)}
		for i := len(s.User) - 1; i >= 0; i-- {
			f := s.User[i]
			name := funcName(f)
			if f.Symbol != "" && f.Module != "" {
				name += " [" + path.Base(f.Module) + "]"
			}
			parts = append(parts, foldName(name))
		}
		for i := len(s.Kernel) - 1; i >= 0; i-- {
			parts = append(parts, foldName(funcName(s.Kernel[i])))
		}
		fmt.Fprintf(bw, "%s %d\n", strings.Join(parts, ";"), s.Micros())
	}
	return bw.Flush()
}

// foldName makes a name safe inside a folded line.
func foldName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == ';':
			b.WriteByte(':')
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029':
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	out := strings.TrimSpace(b.String())
	if out == "" {
		return "?"
	}
	return out
}

// Pprof writes the stacks as a gzip-compressed pprof profile with two sample
// types, "samples/count" and "blocked/microseconds" (the default), and the
// labels "comm" and "kind" on every sample. started is the wall-clock start
// of the run (zero when unknown).
func Pprof(w io.Writer, tl *timeline.Timeline, started time.Time) error {
	p := newProfile()
	for _, s := range Stacks(tl) {
		var locs []uint64
		for _, f := range s.Kernel {
			locs = append(locs, p.location(f, true))
		}
		for _, f := range s.User {
			locs = append(locs, p.location(f, false))
		}
		if len(locs) == 0 {
			locs = append(locs, p.location(event.Frame{Symbol: "[no stack captured]"}, true))
		}
		p.samples = append(p.samples, sample{locs: locs, values: []int64{s.Count, s.Micros()},
			labels: [][2]string{{"comm", s.Comm}, {"kind", s.Kind}}})
	}
	var dur time.Duration
	if tl != nil {
		dur = tl.Duration()
	}
	zw := gzip.NewWriter(w)
	if _, err := zw.Write(p.encode(started, dur)); err != nil {
		return err
	}
	return zw.Close()
}
