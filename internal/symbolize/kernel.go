package symbolize

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
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

// Kernel resolves kernel text addresses to symbols.
type Kernel struct {
	syms    symtab   // the text symbols, sorted by address
	mods    []uint16 // mods[i] is symbol i's module, an index in modules
	modules []string // modules[0] is KernelModule

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
	for i := range e.k.syms.len() {
		if e.k.syms.name(i) == name {
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

// kentry is one text symbol of kallsyms while it is parsed: its name and
// module by place in the file's bytes.
type kentry struct {
	addr    uint64
	nameOff uint32
	nameLen uint16
	mod     uint16
}

// parseKallsyms parses kallsyms in one pass over the bytes. The table it
// returns keeps the names in one string and none of data (some 5 MB on
// 6.18, of which the names of text symbols are half).
func parseKallsyms(data []byte) (_ *Kernel, nonZero bool, _ error) {
	if len(data) > math.MaxUint32 {
		return nil, false, fmt.Errorf("kallsyms is %d bytes, more than 4 GiB", len(data))
	}
	entries := make([]kentry, 0, len(data)/40)
	modules := []string{KernelModule}
	modIndex := map[string]uint16{}
	nameBytes := 0
	sawNonZero := false
	line := 0
	for pos := 0; pos < len(data); {
		line++
		lineStart := pos
		l := data[pos:]
		if i := bytes.IndexByte(l, '\n'); i >= 0 {
			l = l[:i]
			pos += i + 1
		} else {
			pos = len(data)
		}
		var fields [5][]byte
		var offs [5]int // where each field starts in data
		n := 0
		for at := 0; ; {
			for at < len(l) && (l[at] == ' ' || l[at] == '\t' || l[at] == '\r') {
				at++
			}
			if at == len(l) {
				break
			}
			if n == len(fields) {
				n++
				break
			}
			end := at
			for end < len(l) && l[end] != ' ' && l[end] != '\t' && l[end] != '\r' {
				end++
			}
			fields[n], offs[n] = l[at:end], lineStart+at
			n++
			at = end
		}
		if n == 0 {
			continue
		}
		if n < 3 || n > 4 || len(fields[1]) != 1 {
			return nil, false, fmt.Errorf("kallsyms line %d: malformed %q", line, l)
		}
		addr, err := strconv.ParseUint(bytesString(fields[0]), 16, 64)
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
		if len(fields[2]) > math.MaxUint16 {
			return nil, false, fmt.Errorf("kallsyms line %d: a name of %d bytes", line, len(fields[2]))
		}
		var mod uint16
		if n == 4 {
			m := fields[3]
			if len(m) < 3 || m[0] != '[' || m[len(m)-1] != ']' {
				return nil, false, fmt.Errorf("kallsyms line %d: malformed module %q", line, m)
			}
			m = m[1 : len(m)-1]
			i, ok := modIndex[string(m)]
			if !ok {
				if len(modules) > math.MaxUint16 {
					return nil, false, fmt.Errorf("kallsyms line %d: more than %d modules", line, math.MaxUint16)
				}
				i = uint16(len(modules))
				modules = append(modules, string(m))
				modIndex[string(m)] = i
			}
			mod = i
		}
		entries = append(entries, kentry{addr: addr, nameOff: uint32(offs[2]), nameLen: uint16(len(fields[2])), mod: mod})
		nameBytes += len(fields[2])
	}
	if len(entries) == 0 {
		return nil, false, errors.New("kallsyms has no text symbols")
	}
	// Stable: among aliases at one address keep the first listed.
	slices.SortStableFunc(entries, func(a, b kentry) int { return cmp.Compare(a.addr, b.addr) })
	b := newSymtabBuilder(len(entries), nameBytes)
	mods := make([]uint16, len(entries))
	for i, e := range entries {
		b.add(e.addr, bytesString(data[e.nameOff:e.nameOff+uint32(e.nameLen)]))
		mods[i] = e.mod
	}
	return &Kernel{syms: b.done(), mods: mods, modules: slices.Clip(modules)}, sawNonZero, nil
}

// Len returns the number of text symbols loaded.
func (k *Kernel) Len() int { return k.syms.len() }

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
	i := k.syms.at(lookup)
	if i < 0 || lookup-k.syms.starts[i] >= maxKernelFunction {
		return event.Frame{Addr: addr}
	}
	return event.Frame{Addr: addr, Symbol: k.syms.name(i), Offset: addr - k.syms.starts[i], Module: k.modules[k.mods[i]]}
}

// Frames resolves a stack, innermost first; every frame but the first is a
// return address and is looked up one byte earlier (see stackFrames).
func (k *Kernel) Frames(addrs []uint64) []event.Frame {
	return stackFrames(addrs, k.frame)
}

// Addr returns the address of a text symbol of the kernel image (not of a
// module), such as "__sched_text_start".
func (k *Kernel) Addr(name string) (uint64, bool) {
	for i := range k.syms.len() {
		if k.mods[i] == 0 && k.syms.name(i) == name {
			return k.syms.starts[i], true
		}
	}
	return 0, false
}
