package symbolize

import (
	"strings"
	"unsafe"
)

// symtab is a table of symbols sorted by start address, held compactly:
// the starts in one slice, every name in one string, and where each name
// ends in it. A symbol costs 12 bytes beside its name, against 24 for a
// string header and 8 for its address in a slice of structs, and the
// names of a table are one allocation instead of one each.
type symtab struct {
	starts []uint64 // sorted
	names  string   // the names in starts' order, back to back
	ends   []uint32 // ends[i] is where name i ends in names; it starts at ends[i-1] (or 0)
}

// name returns the name of symbol i.
func (t *symtab) name(i int) string {
	var from uint32
	if i > 0 {
		from = t.ends[i-1]
	}
	return t.names[from:t.ends[i]]
}

// len returns the number of symbols.
func (t *symtab) len() int { return len(t.starts) }

// bytes is what the table keeps on the heap.
func (t *symtab) bytes() int {
	return cap(t.starts)*8 + cap(t.ends)*4 + len(t.names)
}

// at returns the index of the symbol that holds addr (see symbolAt).
func (t *symtab) at(addr uint64) int { return symbolAt(t.starts, addr) }

// symtabBuilder makes a symtab of n symbols added in address order.
type symtabBuilder struct {
	t     symtab
	names strings.Builder
}

func newSymtabBuilder(n, nameBytes int) *symtabBuilder {
	b := &symtabBuilder{t: symtab{starts: make([]uint64, 0, n), ends: make([]uint32, 0, n)}}
	b.names.Grow(nameBytes)
	return b
}

// add appends a symbol; its start must not be below the last one's, and
// the names together must stay under 4 GiB (callers check).
func (b *symtabBuilder) add(start uint64, name string) {
	b.t.starts = append(b.t.starts, start)
	b.names.WriteString(name)
	b.t.ends = append(b.t.ends, uint32(b.names.Len()))
}

func (b *symtabBuilder) done() symtab {
	b.t.names = b.names.String()
	return b.t
}

// bytesString is s's bytes as a string without a copy, for a map lookup
// or a write that copies it anyway; b must not change while it is used.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
