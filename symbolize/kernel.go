package symbolize

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/whyslow/whyslow/event"
)

// ErrNoKernelAddresses means kallsyms lists every address as zero: the
// reader lacks privilege (CAP_SYSLOG) or kernel.kptr_restrict hides them.
var ErrNoKernelAddresses = errors.New("kallsyms shows only zero addresses (need root/CAP_SYSLOG, or kernel.kptr_restrict=2)")

// KernelModule is the Module of frames in the kernel image itself.
const KernelModule = "kernel"

type ksym struct {
	addr   uint64
	name   string
	module string // KernelModule or the module name without brackets
}

// Kernel resolves kernel text addresses to symbols.
type Kernel struct {
	syms []ksym // sorted by addr
}

// LoadKernel reads <procfs>/kallsyms.
func LoadKernel(procfs string) (*Kernel, error) {
	f, err := os.Open(filepath.Join(procfs, "kallsyms"))
	if err != nil {
		return nil, fmt.Errorf("opening kallsyms: %w", err)
	}
	defer f.Close()
	return ParseKallsyms(f)
}

// ParseKallsyms parses the kallsyms format: "ADDR TYPE NAME [\t[MODULE]]".
// Only text symbols (types t, T, w, W) are kept. Malformed lines are an error.
func ParseKallsyms(r io.Reader) (*Kernel, error) {
	var syms []ksym
	sawNonZero := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 3 || len(fields) > 4 || len(fields[1]) != 1 {
			return nil, fmt.Errorf("kallsyms line %d: malformed %q", line, text)
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("kallsyms line %d: address: %w", line, err)
		}
		if addr != 0 {
			sawNonZero = true
		}
		switch fields[1][0] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		mod := KernelModule
		if len(fields) == 4 {
			m := fields[3]
			if len(m) < 3 || m[0] != '[' || m[len(m)-1] != ']' {
				return nil, fmt.Errorf("kallsyms line %d: malformed module %q", line, m)
			}
			mod = m[1 : len(m)-1]
		}
		syms = append(syms, ksym{addr: addr, name: fields[2], module: mod})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kallsyms: %w", err)
	}
	if len(syms) == 0 {
		return nil, errors.New("kallsyms has no text symbols")
	}
	if !sawNonZero {
		return nil, ErrNoKernelAddresses
	}
	// Stable: among aliases at one address keep the first listed.
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	return &Kernel{syms: syms}, nil
}

// Len returns the number of text symbols loaded.
func (k *Kernel) Len() int { return len(k.syms) }

// Frame resolves one address. An address below the first symbol gives a
// frame without a symbol.
func (k *Kernel) Frame(addr uint64) event.Frame {
	return k.frame(addr, addr)
}

// frame resolves lookup but reports addr (lookup may be addr-1 for return
// addresses, which can point just past the end of a noreturn call's function).
func (k *Kernel) frame(addr, lookup uint64) event.Frame {
	i := sort.Search(len(k.syms), func(i int) bool { return k.syms[i].addr > lookup }) - 1
	if i < 0 {
		return event.Frame{Addr: addr}
	}
	// Among aliases at the same address, prefer the first one listed.
	for i > 0 && k.syms[i-1].addr == k.syms[i].addr {
		i--
	}
	s := k.syms[i]
	return event.Frame{Addr: addr, Symbol: s.name, Offset: addr - s.addr, Module: s.module}
}

// Frames resolves a stack, innermost first. Every frame but the first is a
// return address, looked up one byte earlier so that a call at the very end
// of a function resolves to that function.
func (k *Kernel) Frames(addrs []uint64) []event.Frame {
	out := make([]event.Frame, 0, len(addrs))
	for i, a := range addrs {
		lookup := a
		if i > 0 && a > 0 {
			lookup = a - 1
		}
		out = append(out, k.frame(a, lookup))
	}
	return out
}

// Addr returns the address of a text symbol of the kernel image (not of a
// module), such as "__sched_text_start".
func (k *Kernel) Addr(name string) (uint64, bool) {
	for _, s := range k.syms {
		if s.name == name && s.module == KernelModule {
			return s.addr, true
		}
	}
	return 0, false
}
