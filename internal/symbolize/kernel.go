package symbolize

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/whyslow/whyslow/internal/event"
)

// ErrNoKernelAddresses means kallsyms lists every address as zero: the
// reader lacks privilege (CAP_SYSLOG) or kernel.kptr_restrict hides them.
var ErrNoKernelAddresses = errors.New("kallsyms shows only zero addresses (need root/CAP_SYSLOG, or kernel.kptr_restrict=2)")

// KernelModule is the Module of frames in the kernel image itself.
const KernelModule = event.KernelModule

type ksym struct {
	addr   uint64
	name   string
	module string // KernelModule or the module name without brackets
}

func (s ksym) start() uint64 { return s.addr }

// Kernel resolves kernel text addresses to symbols.
type Kernel struct {
	syms []ksym // sorted by addr

	namesMu sync.Mutex
	names   map[string]bool // KernelHasText's answers
}

// LoadKernel reads <procfs>/kallsyms. It is read and parsed once per
// path for the life of the process (every probe that symbolizes shares
// it): a module loaded later is not seen.
func LoadKernel(procfs string) (*Kernel, error) {
	path := filepath.Join(procfs, "kallsyms")
	loaded.Lock()
	defer loaded.Unlock()
	e := loadKallsyms(path)
	if e.err == nil && !e.nonZero {
		return nil, ErrNoKernelAddresses
	}
	return e.k, e.err
}

// KernelAddressesVisible reads the first lines of <procfs>/kallsyms and
// returns what LoadKernel would fail with for want of addresses: an error
// opening it, ErrNoKernelAddresses when every address there is zero, else
// nil. It reads 4 KiB, not the whole file.
func KernelAddressesVisible(procfs string) error {
	f, err := os.Open(filepath.Join(procfs, "kallsyms"))
	if err != nil {
		return fmt.Errorf("opening kallsyms: %w", err)
	}
	defer f.Close()
	var buf [4096]byte
	n, _ := io.ReadFull(f, buf[:])
	lines := strings.Split(string(buf[:n]), "\n")
	if len(lines) == 0 || strings.TrimSpace(lines[0]) == "" {
		return errors.New("kallsyms has no text symbols")
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 {
			if a, err := strconv.ParseUint(f[0], 16, 64); err == nil && a != 0 {
				return nil
			}
		}
	}
	return ErrNoKernelAddresses
}

// KernelHasText reports whether <procfs>/kallsyms lists name as a text
// symbol (of the kernel or a module); known is false when kallsyms cannot
// be read. Unlike LoadKernel it needs no privilege: names are listed even
// when addresses are hidden. It shares LoadKernel's read.
func KernelHasText(procfs, name string) (found, known bool) {
	loaded.Lock()
	e := loadKallsyms(filepath.Join(procfs, "kallsyms"))
	loaded.Unlock()
	if e.err != nil {
		return false, false
	}
	e.k.namesMu.Lock()
	defer e.k.namesMu.Unlock()
	// A few names are asked, of some 10^5: a scan each, remembered.
	if found, ok := e.k.names[name]; ok {
		return found, true
	}
	for _, s := range e.k.syms {
		if s.name == name {
			found = true
			break
		}
	}
	if e.k.names == nil {
		e.k.names = map[string]bool{}
	}
	e.k.names[name] = found
	return found, true
}

// loadKallsyms reads and parses path once; loaded must be locked.
func loadKallsyms(path string) loadedKernel {
	if e, ok := loaded.m[path]; ok {
		return e
	}
	var e loadedKernel
	data, err := readProcFile(path)
	if err != nil {
		e.err = fmt.Errorf("opening kallsyms: %w", err)
	} else {
		e.k, e.nonZero, e.err = parseKallsyms(data)
	}
	if loaded.m == nil {
		loaded.m = map[string]loadedKernel{}
	}
	loaded.m[path] = e
	return e
}

// readProcFile reads a file that reports no size, as /proc files do, in
// large reads into a buffer sized for kallsyms (some 5 MB): os.ReadFile
// would grow its buffer from 512 bytes.
func readProcFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	b.Grow(6 << 20)
	if _, err := b.ReadFrom(f); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type loadedKernel struct {
	k       *Kernel
	nonZero bool // some address is not zero (readable with privilege)
	err     error
}

// loaded holds what LoadKernel read, by path.
var loaded struct {
	sync.Mutex
	m map[string]loadedKernel
}

// ParseKallsyms parses the kallsyms format: "ADDR TYPE NAME [\t[MODULE]]".
// Only text symbols (types t, T, w, W) are kept. Malformed lines are an error.
func ParseKallsyms(r io.Reader) (*Kernel, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading kallsyms: %w", err)
	}
	k, nonZero, err := parseKallsyms(data)
	if err == nil && !nonZero {
		return nil, ErrNoKernelAddresses
	}
	return k, err
}

// parseKallsyms parses kallsyms in one pass over the bytes: the names are
// slices of one string (kallsyms has some 10^5 lines).
func parseKallsyms(data []byte) (_ *Kernel, nonZero bool, _ error) {
	text := string(data)
	syms := make([]ksym, 0, len(text)/40)
	sawNonZero := false
	line := 0
	for len(text) > 0 {
		line++
		l := text
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			l, text = text[:i], text[i+1:]
		} else {
			text = ""
		}
		var fields [5]string
		n := 0
		for rest := l; ; {
			rest = strings.TrimLeft(rest, " \t\r")
			if rest == "" {
				break
			}
			if n == len(fields) {
				n++
				break
			}
			end := strings.IndexAny(rest, " \t\r")
			if end < 0 {
				end = len(rest)
			}
			fields[n], rest = rest[:end], rest[end:]
			n++
		}
		if n == 0 {
			continue
		}
		if n < 3 || n > 4 || len(fields[1]) != 1 {
			return nil, false, fmt.Errorf("kallsyms line %d: malformed %q", line, l)
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			return nil, false, fmt.Errorf("kallsyms line %d: address: %w", line, err)
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
		if n == 4 {
			m := fields[3]
			if len(m) < 3 || m[0] != '[' || m[len(m)-1] != ']' {
				return nil, false, fmt.Errorf("kallsyms line %d: malformed module %q", line, m)
			}
			mod = m[1 : len(m)-1]
		}
		syms = append(syms, ksym{addr: addr, name: fields[2], module: mod})
	}
	if len(syms) == 0 {
		return nil, false, errors.New("kallsyms has no text symbols")
	}
	// Stable: among aliases at one address keep the first listed.
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	return &Kernel{syms: syms}, sawNonZero, nil
}

// Len returns the number of text symbols loaded.
func (k *Kernel) Len() int { return len(k.syms) }

// Frame resolves one address. An address below the first symbol gives a
// frame without a symbol.
func (k *Kernel) Frame(addr uint64) event.Frame {
	return k.frame(addr, addr)
}

// maxKernelFunction bounds how far past a symbol an address may be and
// still be in its function: no kernel function is this large (the largest
// of 6.18's is 24 KiB). An address further on is code kallsyms did not
// list when it was read, most often a BPF trampoline made later (an
// fentry/fexit program attached after the read), which would otherwise
// take the name of whatever symbol precedes it (seen:
// handshake_exit+0x27647f49 on 6.12, exit_xfs_fs+1189344 and
// __SCT__tp_func_nullb_report_zones+0x21e5c [null_blk] on 5.10).
const maxKernelFunction = 128 << 10

// frame resolves lookup but reports addr (lookup may be addr-1 for return
// addresses, which can point just past the end of a noreturn call's function).
func (k *Kernel) frame(addr, lookup uint64) event.Frame {
	i := symbolAt(k.syms, ksym.start, lookup)
	if i < 0 || lookup-k.syms[i].addr >= maxKernelFunction {
		return event.Frame{Addr: addr}
	}
	s := k.syms[i]
	return event.Frame{Addr: addr, Symbol: s.name, Offset: addr - s.addr, Module: s.module}
}

// Frames resolves a stack, innermost first; every frame but the first is a
// return address and is looked up one byte earlier (see stackFrames).
func (k *Kernel) Frames(addrs []uint64) []event.Frame {
	return stackFrames(addrs, k.frame)
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
