package stackexport

// A hand-written encoder for the part of profile.proto
// (github.com/google/pprof/proto/profile.proto) this package needs, so that
// whyslow needs no protobuf dependency. Field numbers are from that file.

import (
	"path"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

type sample struct {
	locs   []uint64
	values []int64
	labels [][2]string
}

type function struct {
	name, file int64 // string table indexes
}

type location struct {
	addr uint64
	fn   uint64
}

type profile struct {
	strings []string
	strIdx  map[string]int64
	funcs   []function
	funcIdx map[[2]string]uint64
	locs    []location
	locIdx  map[[3]string]uint64
	samples []sample
}

func newProfile() *profile {
	p := &profile{strIdx: map[string]int64{}, funcIdx: map[[2]string]uint64{}, locIdx: map[[3]string]uint64{}}
	p.str("") // index 0 is always ""
	return p
}

func (p *profile) str(s string) int64 {
	if i, ok := p.strIdx[s]; ok {
		return i
	}
	i := int64(len(p.strings))
	p.strings = append(p.strings, s)
	p.strIdx[s] = i
	return i
}

// location returns the id of a frame's location, with its function named by
// symbol and, for user code, the binary as the function's file.
func (p *profile) location(f event.Frame, kernel bool) uint64 {
	name := funcName(f)
	file := "[kernel]"
	if !kernel {
		file = path.Base(f.Module)
		if f.Module == "" {
			file = "[user]"
		}
	} else if f.Module != "" && f.Module != "kernel" {
		file = "[" + f.Module + "]"
	}
	lk := [3]string{name, file, string(rune(0)) + hex(f.Addr)}
	if id, ok := p.locIdx[lk]; ok {
		return id
	}
	fk := [2]string{name, file}
	fid, ok := p.funcIdx[fk]
	if !ok {
		p.funcs = append(p.funcs, function{name: p.str(name), file: p.str(file)})
		fid = uint64(len(p.funcs))
		p.funcIdx[fk] = fid
	}
	p.locs = append(p.locs, location{addr: f.Addr, fn: fid})
	id := uint64(len(p.locs))
	p.locIdx[lk] = id
	return id
}

func hex(v uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// encode writes the Profile message.
func (p *profile) encode(started time.Time, dur time.Duration) []byte {
	var m pb
	valueType := func(typ, unit string) []byte {
		var v pb
		v.int(1, p.str(typ))
		v.int(2, p.str(unit))
		return v.b
	}
	m.msg(1, valueType("samples", "count"))        // sample_type
	m.msg(1, valueType("blocked", "microseconds")) // sample_type
	for _, s := range p.samples {
		var v pb
		v.packedUint(1, s.locs) // location_id
		v.packedInt(2, s.values)
		for _, l := range s.labels {
			var lb pb
			lb.int(1, p.str(l[0])) // key
			lb.int(2, p.str(l[1])) // str
			v.msg(3, lb.b)
		}
		m.msg(2, v.b)
	}
	for i, l := range p.locs {
		var v pb
		v.uint(1, uint64(i+1)) // id
		v.uint(3, l.addr)      // address
		var line pb
		line.uint(1, l.fn) // function_id
		v.msg(4, line.b)
		m.msg(4, v.b)
	}
	for i, f := range p.funcs {
		var v pb
		v.uint(1, uint64(i+1)) // id
		v.int(2, f.name)       // name
		v.int(3, f.name)       // system_name
		v.int(4, f.file)       // filename
		m.msg(5, v.b)
	}
	// string_table must be complete before it is written: the period type
	// and the default sample type add theirs first.
	period := valueType("blocked", "microseconds")
	def := p.str("blocked")
	for _, s := range p.strings {
		m.bytes(6, []byte(s))
	}
	if !started.IsZero() {
		m.int(9, started.UnixNano()) // time_nanos
	}
	m.int(10, int64(dur)) // duration_nanos
	m.msg(11, period)     // period_type
	m.int(12, 1)          // period
	m.int(14, def)        // default_sample_type
	return m.b
}

// pb is a protobuf message being written.
type pb struct{ b []byte }

func (m *pb) varint(v uint64) {
	for v >= 0x80 {
		m.b = append(m.b, byte(v)|0x80)
		v >>= 7
	}
	m.b = append(m.b, byte(v))
}

func (m *pb) key(field, wire int) { m.varint(uint64(field)<<3 | uint64(wire)) }

// uint writes a varint field, leaving zero out as proto3 does.
func (m *pb) uint(field int, v uint64) {
	if v == 0 {
		return
	}
	m.key(field, 0)
	m.varint(v)
}

func (m *pb) int(field int, v int64) { m.uint(field, uint64(v)) }

// bytes writes a length-delimited field, also when empty (the string
// table's first entry is "").
func (m *pb) bytes(field int, b []byte) {
	m.key(field, 2)
	m.varint(uint64(len(b)))
	m.b = append(m.b, b...)
}

func (m *pb) msg(field int, b []byte) { m.bytes(field, b) }

func (m *pb) packedUint(field int, vs []uint64) {
	if len(vs) == 0 {
		return
	}
	var p pb
	for _, v := range vs {
		p.varint(v)
	}
	m.bytes(field, p.b)
}

func (m *pb) packedInt(field int, vs []int64) {
	us := make([]uint64, len(vs))
	for i, v := range vs {
		us[i] = uint64(v)
	}
	m.packedUint(field, us)
}
