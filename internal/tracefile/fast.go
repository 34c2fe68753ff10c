package tracefile

// The fast codec: the same values and the same JSON as the reflective codec
// of codec.go (encode, decodeStruct), but through plans compiled once per Go
// type, straight between the Go value and the bytes of a line: no
// map[string]any, no boxed values, no per-field reflection on names and
// tags. A trace holds millions of event records; this is what reads and
// writes them.
//
// The reflective codec stays the reference. The fast decoder handles the
// common shapes (objects, arrays, strings with any escapes, integers,
// booleans, null) and gives up on anything else: a syntax error, a type
// mismatch, a number that is not a plain integer in range, a string
// written as {"base64": ...}, a histogram. Then the line goes to the
// reflective codec, which decodes it or says exactly what is wrong, so
// errors and rare shapes read as before. A differential test and a fuzz
// test hold the two to the same results.

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
)

type planKind uint8

const (
	planString planKind = iota
	planBool
	planInt
	planUint
	planFloat // written by the fast encoder; read by the reflective decoder
	planSlice
	planStruct
	planOther // histograms, arrays: both directions go to the reflective codec
)

// plan is how values of one Go type are read and written.
type plan struct {
	kind   planKind
	typ    reflect.Type
	bits   int     // planInt, planUint
	elem   *plan   // planSlice
	fields []field // planStruct, sorted by name (the order of the keys written)
}

// field is one recorded field of a struct.
type field struct {
	name  string
	index int
	plan  *plan
	key   []byte // `"name":`
}

var plans sync.Map // reflect.Type -> *plan

// planOf returns the plan of type t, compiling it on first use.
func planOf(t reflect.Type) *plan {
	if p, ok := plans.Load(t); ok {
		return p.(*plan)
	}
	p := compile(t)
	actual, _ := plans.LoadOrStore(t, p)
	return actual.(*plan)
}

func compile(t reflect.Type) *plan {
	p := &plan{typ: t, kind: planOther}
	if t == histType || t == sparseType {
		return p
	}
	switch t.Kind() {
	case reflect.String:
		p.kind = planString
	case reflect.Bool:
		p.kind = planBool
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		p.kind, p.bits = planInt, t.Bits()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		p.kind, p.bits = planUint, t.Bits()
	case reflect.Float32, reflect.Float64:
		p.kind = planFloat
	case reflect.Slice:
		p.kind, p.elem = planSlice, planOf(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if !t.Field(i).IsExported() {
				return p // the reflective codec refuses it, with the reason
			}
		}
		p.kind = planStruct
		for i := 0; i < t.NumField(); i++ {
			name := fieldName(t.Field(i))
			if name == "" {
				continue
			}
			key, _ := json.Marshal(name)
			p.fields = append(p.fields, field{name: name, index: i, plan: planOf(t.Field(i).Type), key: append(key, ':')})
		}
		slices.SortFunc(p.fields, func(a, b field) int {
			if a.name < b.name {
				return -1
			}
			if a.name > b.name {
				return 1
			}
			return 0
		})
	}
	return p
}

func (p *plan) lookup(name []byte) *field {
	// Structs have a handful of fields: a scan beats a map.
	for i := range p.fields {
		if p.fields[i].name == string(name) {
			return &p.fields[i]
		}
	}
	return nil
}

// ----- writing -----

// errSlowPath says a value needs the reflective codec.
var errSlowPath = errors.New("value needs the reflective codec")

// appendRecord writes struct v as a record: a JSON object whose first key
// is "type", then v's fields as encodeStruct has them, in key order (the
// bytes encoding/json gives for that map, with "type" moved to the front:
// the reader then knows the record's type before its fields).
func appendRecord(b []byte, kind string, v reflect.Value) ([]byte, error) {
	p := planOf(v.Type())
	if p.kind != planStruct {
		return b, errSlowPath
	}
	b = append(b, `{"type":`...)
	b = appendString(b, kind)
	for i := range p.fields {
		f := &p.fields[i]
		fv := v.Field(f.index)
		if omitted(fv) {
			continue
		}
		if f.name == "type" {
			return b, errSlowPath // a field named "type": the map would lose one
		}
		b = append(b, ',')
		b = append(b, f.key...)
		var err error
		if b, err = appendValue(b, f.plan, fv); err != nil {
			return b, err
		}
	}
	return append(b, '}'), nil
}

// omitted says whether encodeStruct leaves a field out: a nil slice, or a
// zero value of any other kind.
func omitted(v reflect.Value) bool {
	if v.Kind() == reflect.Slice {
		return v.IsNil()
	}
	return v.IsZero()
}

func appendValue(b []byte, p *plan, v reflect.Value) ([]byte, error) {
	switch p.kind {
	case planString:
		s := v.String()
		if !utf8.ValidString(s) {
			return b, errSlowPath
		}
		return appendString(b, s), nil
	case planBool:
		return strconv.AppendBool(b, v.Bool()), nil
	case planInt:
		return strconv.AppendInt(b, v.Int(), 10), nil
	case planUint:
		return strconv.AppendUint(b, v.Uint(), 10), nil
	case planSlice:
		b = append(b, '[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendValue(b, p.elem, v.Index(i)); err != nil {
				return b, err
			}
		}
		return append(b, ']'), nil
	case planStruct:
		b = append(b, '{')
		first := true
		for i := range p.fields {
			f := &p.fields[i]
			fv := v.Field(f.index)
			if omitted(fv) {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, f.key...)
			var err error
			if b, err = appendValue(b, f.plan, fv); err != nil {
				return b, err
			}
		}
		return append(b, '}'), nil
	}
	return b, errSlowPath
}

const hexDigits = "0123456789abcdef"

// appendString writes s, valid UTF-8, as a JSON string the way
// encoding/json does (with its HTML escaping of <, > and &).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// ----- reading -----

// fastReader decodes the records of one trace. It interns what repeats
// across events (names, symbols, whole stacks), as the live probes share
// them, so a read trace holds each once.
type fastReader struct {
	data    []byte
	pos     int
	members []member
	strs    map[string]string
	stacks  map[string][]event.Frame
	unknown []string // paths of keys that are no field
	frames  reflect.Type
}

// member is one key of the record's top-level object and where its value
// lies in the line.
type member struct {
	key        []byte
	start, end int
}

// internLimit bounds the interning tables: past it, new strings and stacks
// are kept as they come.
const internLimit = 1 << 16

func newFastReader() *fastReader {
	return &fastReader{
		strs:   map[string]string{},
		stacks: map[string][]event.Frame{},
		frames: reflect.TypeFor[[]event.Frame](),
	}
}

// record reads line b, a record whose first key is "type" (as whyslow
// writes them), in one pass: its type, then its fields into the value that
// slot gives for that type (an invalid value: a type the caller does not
// take). ok false sends the line to scan and decode (another key order) or
// to the reflective codec (anything else); the value may then be half set.
func (r *fastReader) record(line []byte, slot func(kind string) reflect.Value) (kind string, ok bool) {
	r.data, r.pos, r.unknown = line, 0, r.unknown[:0]
	r.space()
	if !r.consume('{') {
		return "", false
	}
	r.space()
	if key, ok := r.key(); !ok || string(key) != "type" {
		return "", false
	}
	r.space()
	if !r.consume(':') {
		return "", false
	}
	r.space()
	s, ok := r.str()
	if !ok {
		return "", false
	}
	kind = r.intern(s)
	v := slot(kind)
	if !v.IsValid() {
		return "", false
	}
	p := planOf(v.Type())
	if p.kind != planStruct {
		return "", false
	}
	for {
		r.space()
		if r.consume('}') {
			break
		}
		if !r.consume(',') {
			return "", false
		}
		r.space()
		key, ok := r.key()
		if !ok {
			return "", false
		}
		r.space()
		if !r.consume(':') {
			return "", false
		}
		r.space()
		f := p.lookup(key)
		switch {
		case f != nil:
			if !r.value(f.plan, v.Field(f.index)) {
				return "", false
			}
		case string(key) == "type":
			return "", false // a second type: the last one counts
		default:
			r.unknown = append(r.unknown, string(key))
			if !r.skip(0) {
				return "", false
			}
		}
	}
	r.space()
	if r.pos != len(r.data) {
		return "", false
	}
	return kind, true
}

// scan checks that line is one JSON object and notes its members. It
// returns the record's "type", ok false when the line is not a valid JSON
// object with a string "type" (the reflective path then says why).
func (r *fastReader) scan(line []byte) (kind string, ok bool) {
	r.data, r.pos, r.members = line, 0, r.members[:0]
	r.space()
	if !r.consume('{') {
		return "", false
	}
	r.space()
	typeAt := -1
	if !r.consume('}') {
		for {
			r.space()
			key, ok := r.key()
			if !ok {
				return "", false
			}
			r.space()
			if !r.consume(':') {
				return "", false
			}
			r.space()
			start := r.pos
			if !r.skip(0) {
				return "", false
			}
			if string(key) == "type" {
				typeAt = len(r.members)
			}
			r.members = append(r.members, member{key: key, start: start, end: r.pos})
			r.space()
			if r.consume(',') {
				continue
			}
			if r.consume('}') {
				break
			}
			return "", false
		}
	}
	r.space()
	if r.pos != len(r.data) || typeAt < 0 {
		return "", false
	}
	m := r.members[typeAt]
	r.pos = m.start
	s, ok := r.str()
	if !ok || r.pos != m.end {
		return "", false
	}
	return r.intern(s), true
}

// decode sets v, a new zero struct, from the members of the last scanned
// line but "type"; ok false when a value needs the reflective codec. Keys
// that are no field are noted in r.unknown.
func (r *fastReader) decode(v reflect.Value) bool {
	p := planOf(v.Type())
	if p.kind != planStruct {
		return false
	}
	r.unknown = r.unknown[:0]
	for _, m := range r.members {
		if string(m.key) == "type" {
			continue
		}
		f := p.lookup(m.key)
		if f == nil {
			r.unknown = append(r.unknown, string(m.key))
			continue
		}
		r.pos = m.start
		if !r.value(f.plan, v.Field(f.index)) {
			return false
		}
	}
	return true
}

func (r *fastReader) space() {
	for r.pos < len(r.data) {
		switch r.data[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

func (r *fastReader) consume(c byte) bool {
	if r.pos < len(r.data) && r.data[r.pos] == c {
		r.pos++
		return true
	}
	return false
}

// key reads an object key; without escapes it is a slice of the line.
func (r *fastReader) key() ([]byte, bool) {
	if r.pos >= len(r.data) || r.data[r.pos] != '"' {
		return nil, false
	}
	start := r.pos + 1
	for i := start; i < len(r.data); i++ {
		c := r.data[i]
		if c == '"' {
			r.pos = i + 1
			return r.data[start:i], true
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	s, ok := r.str()
	return []byte(s), ok
}

// maxDepth bounds nesting, as encoding/json does (10000).
const maxDepth = 10000

// skip passes over one valid JSON value.
func (r *fastReader) skip(depth int) bool {
	if depth > maxDepth || r.pos >= len(r.data) {
		return false
	}
	switch c := r.data[r.pos]; {
	case c == '"':
		return r.skipString()
	case c == '{':
		r.pos++
		r.space()
		if r.consume('}') {
			return true
		}
		for {
			r.space()
			if !r.skipString() {
				return false
			}
			r.space()
			if !r.consume(':') {
				return false
			}
			r.space()
			if !r.skip(depth + 1) {
				return false
			}
			r.space()
			if r.consume(',') {
				continue
			}
			return r.consume('}')
		}
	case c == '[':
		r.pos++
		r.space()
		if r.consume(']') {
			return true
		}
		for {
			r.space()
			if !r.skip(depth + 1) {
				return false
			}
			r.space()
			if r.consume(',') {
				continue
			}
			return r.consume(']')
		}
	case c == '-' || c >= '0' && c <= '9':
		_, ok := r.number()
		return ok
	default:
		return r.literal("true") || r.literal("false") || r.literal("null")
	}
}

func (r *fastReader) literal(s string) bool {
	if bytes.HasPrefix(r.data[r.pos:], []byte(s)) {
		r.pos += len(s)
		return true
	}
	return false
}

// skipString passes over a string, checking its escapes and bytes as
// encoding/json's scanner does (invalid UTF-8 is accepted there too).
func (r *fastReader) skipString() bool {
	if r.pos >= len(r.data) || r.data[r.pos] != '"' {
		return false
	}
	for i := r.pos + 1; i < len(r.data); i++ {
		switch c := r.data[i]; {
		case c == '"':
			r.pos = i + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			i++
			if i >= len(r.data) {
				return false
			}
			switch r.data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(r.data) {
					return false
				}
				for _, h := range r.data[i+1 : i+5] {
					if unhex(h) < 0 {
						return false
					}
				}
				i += 4
			default:
				return false
			}
		}
	}
	return false
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// number reads a JSON number literal.
func (r *fastReader) number() ([]byte, bool) {
	start, i := r.pos, r.pos
	d := r.data
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return nil, false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return nil, false
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return nil, false
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	r.pos = i
	return d[start:i], true
}

// str reads a string value as encoding/json decodes it: escapes resolved,
// invalid UTF-8 and lone surrogates replaced by U+FFFD. The string is a
// view of the line or of a scratch buffer: intern or copy it to keep it.
func (r *fastReader) str() (string, bool) {
	d := r.data
	if r.pos >= len(d) || d[r.pos] != '"' {
		return "", false
	}
	start := r.pos + 1
	i := start
	for i < len(d) {
		c := d[i]
		if c == '"' {
			r.pos = i + 1
			return unsafeString(d[start:i]), true
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		i++
	}
	// The slow way: escapes or non-ASCII bytes.
	out := make([]byte, 0, i-start+16)
	out = append(out, d[start:i]...)
	for i < len(d) {
		c := d[i]
		switch {
		case c == '"':
			r.pos = i + 1
			return string(out), true
		case c < 0x20:
			return "", false
		case c == '\\':
			if i+1 >= len(d) {
				return "", false
			}
			switch e := d[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
				i += 2
			case 'b':
				out = append(out, '\b')
				i += 2
			case 'f':
				out = append(out, '\f')
				i += 2
			case 'n':
				out = append(out, '\n')
				i += 2
			case 'r':
				out = append(out, '\r')
				i += 2
			case 't':
				out = append(out, '\t')
				i += 2
			case 'u':
				c1, ok := hex4(d, i+2)
				if !ok {
					return "", false
				}
				i += 6
				if utf16.IsSurrogate(c1) {
					if c2, ok := hex4(d, i+2); ok && i+1 < len(d) && d[i] == '\\' && d[i+1] == 'u' {
						if dec := utf16.DecodeRune(c1, c2); dec != utf8.RuneError {
							out = utf8.AppendRune(out, dec)
							i += 6
							continue
						}
					}
					c1 = utf8.RuneError
				}
				out = utf8.AppendRune(out, c1)
			default:
				return "", false
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			rr, size := utf8.DecodeRune(d[i:])
			if rr == utf8.RuneError && size == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, d[i:i+size]...)
			}
			i += size
		}
	}
	return "", false
}

func hex4(d []byte, at int) (rune, bool) {
	if at+4 > len(d) {
		return 0, false
	}
	var v rune
	for _, c := range d[at : at+4] {
		h := unhex(c)
		if h < 0 {
			return 0, false
		}
		v = v<<4 | rune(h)
	}
	return v, true
}

// intern returns a kept copy of s, shared with earlier equal strings.
func (r *fastReader) intern(s string) string {
	if k, ok := r.strs[s]; ok {
		return k
	}
	k := string([]byte(s)) // s may be a view of the line
	if len(r.strs) < internLimit {
		r.strs[k] = k
	}
	return k
}

// value decodes the value at r.pos into v by plan p. A key that is no field
// inside a nested object sends the line to the reflective codec, which
// names it by its path.
func (r *fastReader) value(p *plan, v reflect.Value) bool {
	d := r.data
	if r.literal("null") {
		v.SetZero()
		return true
	}
	switch p.kind {
	case planString:
		s, ok := r.str()
		if !ok {
			return false // a {"base64": ...} object, or no string
		}
		v.SetString(r.intern(s))
		return true
	case planBool:
		switch {
		case r.literal("true"):
			v.SetBool(true)
		case r.literal("false"):
			v.SetBool(false)
		default:
			return false
		}
		return true
	case planInt:
		n, ok := r.number()
		if !ok {
			return false
		}
		i, err := strconv.ParseInt(unsafeString(n), 10, 64)
		if err != nil || v.OverflowInt(i) {
			return false
		}
		v.SetInt(i)
		return true
	case planUint:
		n, ok := r.number()
		if !ok {
			return false
		}
		u, err := strconv.ParseUint(unsafeString(n), 10, 64)
		if err != nil || v.OverflowUint(u) {
			return false
		}
		v.SetUint(u)
		return true
	case planSlice:
		if r.pos >= len(d) || d[r.pos] != '[' {
			return false
		}
		if p.typ == r.frames {
			return r.stack(p, v)
		}
		return r.slice(p, v)
	case planStruct:
		if r.pos >= len(d) || d[r.pos] != '{' {
			return false
		}
		v.SetZero()
		r.pos++
		r.space()
		if r.consume('}') {
			return true
		}
		for {
			r.space()
			key, ok := r.key()
			if !ok {
				return false
			}
			r.space()
			if !r.consume(':') {
				return false
			}
			r.space()
			f := p.lookup(key)
			if f == nil || !r.value(f.plan, v.Field(f.index)) {
				return false
			}
			r.space()
			if r.consume(',') {
				continue
			}
			return r.consume('}')
		}
	}
	return false
}

func (r *fastReader) slice(p *plan, v reflect.Value) bool {
	r.pos++ // [
	s := reflect.MakeSlice(p.typ, 0, 4)
	r.space()
	if !r.consume(']') {
		for {
			r.space()
			s = reflect.Append(s, reflect.Zero(p.elem.typ))
			if !r.value(p.elem, s.Index(s.Len()-1)) {
				return false
			}
			r.space()
			if r.consume(',') {
				continue
			}
			if !r.consume(']') {
				return false
			}
			break
		}
	}
	v.Set(s)
	return true
}

// stack decodes a list of frames, shared with every earlier equal list.
func (r *fastReader) stack(p *plan, v reflect.Value) bool {
	start := r.pos
	if !r.skip(0) {
		return false
	}
	raw := r.data[start:r.pos]
	if frames, ok := r.stacks[unsafeString(raw)]; ok {
		v.Set(reflect.ValueOf(frames))
		return true
	}
	end := r.pos
	r.pos = start
	if !r.slice(p, v) || r.pos != end {
		return false
	}
	if len(r.stacks) < internLimit {
		r.stacks[string(raw)] = v.Interface().([]event.Frame)
	}
	return true
}

// unsafeString views b as a string without a copy: only for lookups and
// parsing, never kept.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
