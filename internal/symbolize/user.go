package symbolize

import (
	"bufio"
	"bytes"
	"debug/elf"
	"debug/gosym"
	endian "encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unique"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
)

// AnonModule is the Module of frames in anonymous executable memory (JIT
// code). Frames outside every executable mapping have no Module.
const AnonModule = "[anon]"

// mapping is one executable line of /proc/PID/maps.
type mapping struct {
	start, end, off uint64
	dev             string
	inode           uint64
	path            string // "" for anonymous memory, "[vdso]" and such for special ones
}

func (m mapping) deleted() bool { return strings.HasSuffix(m.path, " (deleted)") }

// file reports whether the mapping is backed by a regular file.
func (m mapping) file() bool { return m.inode != 0 && strings.HasPrefix(m.path, "/") }

// User resolves the user-space addresses of one process.
type User struct {
	Pid    uint32
	procfs string
	maps   []mapping // executable mappings, sorted by start
	bins   *binaries
}

// LoadUser reads <procfs>/PID/maps. Binaries are opened lazily, when an
// address in them is first resolved; resolve soon, before the process exits.
func LoadUser(procfs string, pid uint32) (*User, error) {
	return loadUser(procfs, pid, newBinaries(defaultMaxBinaries, DefaultMaxSymbolBytes))
}

func loadUser(procfs string, pid uint32, bins *binaries) (*User, error) {
	f, err := os.Open(filepath.Join(procfs, strconv.FormatUint(uint64(pid), 10), "maps"))
	if err != nil {
		return nil, fmt.Errorf("opening maps: %w", err)
	}
	defer f.Close()
	maps, err := parseMaps(f)
	if err != nil {
		return nil, err
	}
	return &User{Pid: pid, procfs: procfs, maps: maps, bins: bins}, nil
}

// parseMaps keeps the executable mappings of a /proc/PID/maps listing.
func parseMaps(r io.Reader) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		// start-end perms offset dev inode [path]; the path may hold spaces.
		f := strings.SplitN(text, " ", 6)
		if len(f) < 5 {
			return nil, fmt.Errorf("maps line %d: malformed %q", line, text)
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %d: malformed range %q", line, f[0])
		}
		var m mapping
		var err1, err2, err3, err4 error
		m.start, err1 = strconv.ParseUint(lo, 16, 64)
		m.end, err2 = strconv.ParseUint(hi, 16, 64)
		m.off, err3 = strconv.ParseUint(f[2], 16, 64)
		m.inode, err4 = strconv.ParseUint(strings.TrimSpace(f[4]), 10, 64)
		if err := errors.Join(err1, err2, err3, err4); err != nil || m.end < m.start || len(f[1]) < 3 {
			return nil, fmt.Errorf("maps line %d: malformed %q", line, text)
		}
		if f[1][2] != 'x' {
			continue
		}
		m.dev = f[3]
		if len(f) == 6 {
			m.path = strings.TrimLeft(f[5], " ")
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading maps: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out, nil
}

// find returns the executable mapping holding addr.
func (u *User) find(addr uint64) (mapping, bool) {
	i := sort.Search(len(u.maps), func(i int) bool { return u.maps[i].end > addr })
	if i < len(u.maps) && u.maps[i].start <= addr {
		return u.maps[i], true
	}
	return mapping{}, false
}

// Contains reports whether addr lies in an executable mapping of the process.
func (u *User) Contains(addr uint64) bool {
	_, ok := u.find(addr)
	return ok
}

// Frame resolves one address.
func (u *User) Frame(addr uint64) event.Frame { return u.frame(addr, addr, nil) }

// Frames resolves a stack, innermost first; every frame but the first is a
// return address and is looked up one byte earlier (see stackFrames).
func (u *User) Frames(addrs []uint64) []event.Frame {
	// The binaries of this stack, so that one too large for the cache is
	// read once for the stack, not once a frame.
	var held stackBinaries
	return stackFrames(addrs, func(addr, lookup uint64) event.Frame { return u.frame(addr, lookup, &held) })
}

// stackBinaries holds the binaries one stack's frames were found in.
type stackBinaries []struct {
	start uint64 // the mapping's
	b     *binary
}

// binary returns the binary of mapping m, from held when it is there.
func (u *User) binary(m mapping, held *stackBinaries) *binary {
	if held != nil {
		for _, h := range *held {
			if h.start == m.start {
				return h.b
			}
		}
	}
	b := u.bins.get(m, u.open)
	if held != nil {
		*held = append(*held, struct {
			start uint64
			b     *binary
		}{m.start, b})
	}
	return b
}

func (u *User) frame(addr, lookup uint64, held *stackBinaries) event.Frame {
	m, ok := u.find(lookup)
	if !ok {
		return event.Frame{Addr: addr}
	}
	fr := event.Frame{Addr: addr, Module: m.path}
	if fr.Module == "" {
		fr.Module = AnonModule
	}
	if !m.file() || u.bins == nil {
		return fr
	}
	b := u.binary(m, held)
	if b == nil {
		return fr // binary gone or unreadable: module only
	}
	// Address -> file offset -> ELF virtual address. This holds for PIE and
	// non-PIE executables and shared libraries alike, whatever the load bias.
	fileOff := lookup - m.start + m.off
	vaddr, ok := b.vaddr(fileOff)
	if !ok {
		return fr
	}
	if name, start, ok := b.lookup(vaddr); ok {
		// The name is a slice of the table's one string of names: a
		// frame that kept it would keep the whole table alive after the
		// cache dropped it (a 1 MB string per read of a Go binary, held by
		// every event of its stacks). unique.Make keeps one copy of each
		// name, shared by the frames and by the tables read again.
		fr.Symbol = unique.Make(name).Value()
		fr.Offset = vaddr - start + (addr - lookup)
	}
	return fr
}

// open opens the file behind a mapping: first through map_files, which
// works for deleted files and other mount namespaces (needs CAP_SYS_ADMIN),
// then through the process's root, then by path.
func (u *User) open(m mapping) (*os.File, error) {
	pid := strconv.FormatUint(uint64(u.Pid), 10)
	tries := []string{
		filepath.Join(u.procfs, pid, "map_files", fmt.Sprintf("%x-%x", m.start, m.end)),
	}
	if !m.deleted() {
		tries = append(tries, filepath.Join(u.procfs, pid, "root", m.path), m.path)
	}
	var errs []error
	for _, p := range tries {
		f, err := os.Open(p)
		if err == nil {
			return f, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// usym is one function symbol of an ELF file, as it is read.
type usym struct {
	value, size uint64
	name        string
}

// binary holds what symbolization needs from one ELF file.
type binary struct {
	loads []elf.ProgHeader // PT_LOAD segments
	syms  symtab           // the function symbols, sorted by value
	sizes []uint32         // sizes[i] is symbol i's size; 0 when unknown or above 4 GiB
}

// bytes is the heap a binary keeps while it is cached: its table and a
// little for the rest.
func (b *binary) bytes() int {
	if b == nil {
		return binaryOverhead
	}
	return binaryOverhead + b.syms.bytes() + cap(b.sizes)*4 + cap(b.loads)*int(unsafe.Sizeof(elf.ProgHeader{}))
}

// binaryOverhead is what a cached binary costs beside its tables: the
// struct, its key, the cache's list element and map entry.
const binaryOverhead = 256

// readBinary reads the PT_LOAD segments and the function symbols of .symtab
// and .dynsym.
func readBinary(r io.ReaderAt) (b *binary, err error) {
	defer func() {
		// Binaries are input we do not control; never let a corrupt one panic.
		if p := recover(); p != nil {
			b, err = nil, fmt.Errorf("reading elf: %v", p)
		}
	}()
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("reading elf: %w", err)
	}
	defer ef.Close()
	b = &binary{}
	var syms []usym
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, p.ProgHeader)
		}
	}
	seen := map[uint64]bool{}
	add := func(list []elf.Symbol) {
		for _, s := range list {
			t := elf.ST_TYPE(s.Info)
			if (t != elf.STT_FUNC && t != elf.STT_GNU_IFUNC) || s.Value == 0 || s.Section == elf.SHN_UNDEF {
				continue
			}
			if seen[s.Value] {
				continue
			}
			seen[s.Value] = true
			syms = append(syms, usym{value: s.Value, size: s.Size, name: s.Name})
		}
	}
	if syms, err := ef.Symbols(); err == nil {
		add(syms)
	}
	if syms, err := ef.DynamicSymbols(); err == nil {
		add(syms)
	}
	if ef.Section(".symtab") == nil {
		// Stripped Go binaries (go build -ldflags=-s, go test) keep their
		// function table in .gopclntab.
		syms = append(syms, goSymbols(ef, seen)...)
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].value < syms[j].value })
	nameBytes := 0
	for _, s := range syms {
		nameBytes += len(s.name)
	}
	if nameBytes > math.MaxUint32 {
		return nil, fmt.Errorf("reading elf: %d bytes of symbol names", nameBytes)
	}
	tb := newSymtabBuilder(len(syms), nameBytes)
	b.sizes = make([]uint32, len(syms))
	for i, s := range syms {
		tb.add(s.value, s.name)
		if s.size <= math.MaxUint32 {
			b.sizes[i] = uint32(s.size)
		}
	}
	b.syms = tb.done()
	return b, nil
}

// goSymbols reads the functions of a Go binary's pclntab, if it has one.
func goSymbols(ef *elf.File, seen map[uint64]bool) []usym {
	sect := ef.Section(".gopclntab")
	if sect == nil {
		sect = ef.Section(".data.rel.ro.gopclntab") // PIE
	}
	text := ef.Section(".text")
	if sect == nil || text == nil {
		return nil
	}
	data, err := sect.Data()
	if err != nil {
		return nil
	}
	if funcs, ok := goFuncs(data, text.Addr, seen); ok {
		return funcs
	}
	return gosymFuncs(data, text.Addr, seen)
}

// gosymFuncs reads the functions of a pclntab through debug/gosym, which
// knows every version of the format but makes a table of each function's
// symbol and line data on the way (some 18 MB to read a 20,000-function
// binary): goFuncs reads the versions of Go 1.18 and later.
func gosymFuncs(data []byte, textStart uint64, seen map[uint64]bool) []usym {
	var tab *gosym.Table
	var err error
	func() {
		// debug/gosym trusts its input; a corrupt table must not take the
		// process down.
		defer func() { _ = recover() }()
		tab, err = gosym.NewTable(nil, gosym.NewLineTable(data, textStart))
	}()
	if tab == nil || err != nil {
		return nil
	}
	var out []usym
	for _, f := range tab.Funcs {
		if f.Entry == 0 || seen[f.Entry] || f.End < f.Entry {
			continue
		}
		seen[f.Entry] = true
		out = append(out, usym{value: f.Entry, size: f.End - f.Entry, name: f.Name})
	}
	return out
}

// Magic numbers of the pclntab versions goFuncs reads (Go 1.18, 1.20+).
const (
	pclntab118 = 0xfffffff0
	pclntab120 = 0xfffffff1
)

// goFuncs reads the functions of a Go 1.18 or later pclntab: the header
// (magic, pad, PC quantum, pointer size, then words: function count, file
// count, text start, and the offsets of the function names, compilation
// units, files, PC tables and function table), the function table (per
// function its entry and its _func's offset as 32-bit words, then the end
// of the text), each _func's name offset. Names are slices of data. ok is
// false for another version; a malformed table gives no functions.
func goFuncs(data []byte, textStart uint64, seen map[uint64]bool) (out []usym, ok bool) {
	if len(data) < 16 || data[4] != 0 || data[5] != 0 {
		return nil, false
	}
	var bo endian.ByteOrder
	switch {
	case endian.LittleEndian.Uint32(data) == pclntab118, endian.LittleEndian.Uint32(data) == pclntab120:
		bo = endian.LittleEndian
	case endian.BigEndian.Uint32(data) == pclntab118, endian.BigEndian.Uint32(data) == pclntab120:
		bo = endian.BigEndian
	default:
		return nil, false
	}
	ptr := uint64(data[7])
	if ptr != 4 && ptr != 8 {
		return nil, true
	}
	word := func(n uint64) uint64 {
		off := 8 + n*ptr
		if off+ptr > uint64(len(data)) {
			return math.MaxUint64
		}
		if ptr == 8 {
			return bo.Uint64(data[off:])
		}
		return uint64(bo.Uint32(data[off:]))
	}
	nfunc, namesOff, tabOff := word(0), word(3), word(7)
	size := uint64(len(data))
	if nfunc > size/8 || namesOff >= size || tabOff >= size || size-tabOff < (2*nfunc+1)*4 {
		return nil, true
	}
	names, tab := data[namesOff:], data[tabOff:]
	out = make([]usym, 0, nfunc)
	for i := range nfunc {
		entry, funcOff, end := uint64(bo.Uint32(tab[8*i:])), uint64(bo.Uint32(tab[8*i+4:])), uint64(bo.Uint32(tab[8*i+8:]))
		if funcOff+8 > uint64(len(tab)) {
			return nil, true
		}
		nameOff := uint64(bo.Uint32(tab[funcOff+4:]))
		if nameOff >= uint64(len(names)) {
			return nil, true
		}
		n := bytes.IndexByte(names[nameOff:], 0)
		if n < 0 {
			return nil, true
		}
		pc := textStart + entry
		if pc == 0 || seen[pc] || end < entry {
			continue
		}
		seen[pc] = true
		out = append(out, usym{value: pc, size: end - entry, name: bytesString(names[nameOff : nameOff+uint64(n)])})
	}
	return out, true
}

// vaddr converts a file offset to the ELF virtual address it is loaded at.
func (b *binary) vaddr(off uint64) (uint64, bool) {
	for _, p := range b.loads {
		if off >= p.Off && off < p.Off+p.Filesz {
			return off - p.Off + p.Vaddr, true
		}
	}
	return 0, false
}

// lookup finds the function containing vaddr: its name and start.
// Symbols without a size cover the space up to the next symbol.
func (b *binary) lookup(vaddr uint64) (name string, start uint64, ok bool) {
	i := b.syms.at(vaddr)
	if i < 0 {
		return "", 0, false
	}
	start = b.syms.starts[i]
	if size := uint64(b.sizes[i]); size > 0 && vaddr >= start+size {
		return "", 0, false
	}
	return b.syms.name(i), start, true
}
