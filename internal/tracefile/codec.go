package tracefile

// The value codec: Go values (the timeline's scalars and its events) to JSON
// data and back, by reflection, so that a field added to an event is
// recorded without touching this package. Field names are the json tag, or
// the Go name in snake_case. Zero fields are left out; a nil slice is left
// out and an empty one is written as []. Strings that are not valid UTF-8
// (a comm or an argument can hold any byte) are written as {"base64": "..."}
// so that no byte is lost. Histograms are written sparsely.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/whyslow/whyslow/internal/hist"
)

var (
	histType   = reflect.TypeFor[hist.Histogram]()
	sparseType = reflect.TypeFor[hist.Sparse]()
)

// fieldName is the name a struct field is recorded under; "" skips it.
func fieldName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	if tag, ok := f.Tag.Lookup("json"); ok {
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			return ""
		}
		if name != "" {
			return name
		}
	}
	return snake(f.Name)
}

// snake turns a Go name into snake_case: SlowSubmits -> slow_submits,
// MinLatency -> min_latency, SumNs -> sum_ns.
func snake(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		if unicode.IsUpper(r) {
			if i > 0 && (unicode.IsLower(rs[i-1]) || (i+1 < len(rs) && unicode.IsLower(rs[i+1]) && unicode.IsUpper(rs[i-1]))) {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// encode turns a value into JSON data (map[string]any, []any, strings,
// numbers, booleans).
func encode(v reflect.Value) (any, error) {
	if v.Type() == histType {
		return encodeHist(v.Addr().Interface().(*hist.Histogram)), nil
	}
	if v.Type() == sparseType {
		s := v.Interface().(hist.Sparse)
		return encodeSparse(&s), nil
	}
	switch v.Kind() {
	case reflect.String:
		s := v.String()
		if utf8.ValidString(s) {
			return s, nil
		}
		return map[string]any{"base64": base64.StdEncoding.EncodeToString([]byte(s))}, nil
	case reflect.Bool:
		return v.Bool(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint(), nil
	case reflect.Float32, reflect.Float64:
		return v.Float(), nil
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			e, err := encode(v.Index(i))
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		return out, nil
	case reflect.Struct:
		return encodeStruct(v)
	}
	return nil, fmt.Errorf("cannot record a value of type %s", v.Type())
}

// encodeStruct writes the fields that are set.
func encodeStruct(v reflect.Value) (map[string]any, error) {
	out := map[string]any{}
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if !t.Field(i).IsExported() { // time.Time and the like would lose their value
			return nil, fmt.Errorf("cannot record %s: it has unexported fields", t)
		}
	}
	for i := 0; i < t.NumField(); i++ {
		name := fieldName(t.Field(i))
		if name == "" {
			continue
		}
		f := v.Field(i)
		if f.Kind() == reflect.Slice && f.IsNil() || f.Kind() != reflect.Slice && f.IsZero() {
			continue
		}
		e, err := encode(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = e
	}
	return out, nil
}

// encodeHist writes a histogram's non-empty slots as [slot, count] pairs.
func encodeHist(h *hist.Histogram) map[string]any {
	slots := []any{}
	for i, c := range h.Counts {
		if c != 0 {
			slots = append(slots, []any{i, c})
		}
	}
	return map[string]any{"count": h.Count, "sum_ns": h.SumNs, "max_ns": h.MaxNs, "slots": slots}
}

// encodeSparse writes a sparse histogram as encodeHist writes the whole
// one: the same record.
func encodeSparse(h *hist.Sparse) map[string]any {
	slots := make([]any, 0, len(h.Slots))
	for _, sc := range h.Slots {
		if sc.Count != 0 {
			slots = append(slots, []any{int(sc.Slot), sc.Count})
		}
	}
	return map[string]any{"count": h.Count, "sum_ns": h.SumNs, "max_ns": h.MaxNs, "slots": slots}
}

// decodeError says which field of a record is wrong.
type decodeError struct {
	path string
	msg  string
}

func (e *decodeError) Error() string {
	if e.path == "" {
		return e.msg
	}
	return "field " + e.path + ": " + e.msg
}

func errAt(path, format string, a ...any) error {
	return &decodeError{path: path, msg: fmt.Sprintf(format, a...)}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// describe names the JSON type of a value for error messages.
func describe(d any) string {
	switch x := d.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", x)
	}
}

// decode stores JSON data (decoded with UseNumber) into v, which must be
// settable. Unknown object keys are reported through unknown.
func decode(d any, v reflect.Value, path string, unknown func(string)) error {
	if d == nil { // null: leave the zero value
		return nil
	}
	if v.Type() == histType {
		return decodeHist(d, v.Addr().Interface().(*hist.Histogram), path)
	}
	if v.Type() == sparseType {
		// Read whole, as a histogram is (the same record; a slot twice
		// adds up), then kept sparse.
		var h hist.Histogram
		if err := decodeHist(d, &h, path); err != nil {
			return err
		}
		v.Set(reflect.ValueOf(hist.Compact(&h)))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		switch x := d.(type) {
		case string:
			v.SetString(x)
			return nil
		case map[string]any:
			s, ok := x["base64"].(string)
			if !ok || len(x) != 1 {
				return errAt(path, "want a string or {\"base64\": ...}, got an object")
			}
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return errAt(path, "bad base64: %v", err)
			}
			v.SetString(string(b))
			return nil
		}
		return errAt(path, "want a string, got %s", describe(d))
	case reflect.Bool:
		b, ok := d.(bool)
		if !ok {
			return errAt(path, "want a boolean, got %s", describe(d))
		}
		v.SetBool(b)
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := d.(json.Number)
		if !ok {
			return errAt(path, "want an integer, got %s", describe(d))
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil || v.OverflowInt(i) {
			return errAt(path, "want an integer of %d bits, got %s", v.Type().Bits(), n)
		}
		v.SetInt(i)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		n, ok := d.(json.Number)
		if !ok {
			return errAt(path, "want an integer, got %s", describe(d))
		}
		u, err := strconv.ParseUint(string(n), 10, 64)
		if err != nil || v.OverflowUint(u) {
			return errAt(path, "want an unsigned integer of %d bits, got %s", v.Type().Bits(), n)
		}
		v.SetUint(u)
		return nil
	case reflect.Float32, reflect.Float64:
		n, ok := d.(json.Number)
		if !ok {
			return errAt(path, "want a number, got %s", describe(d))
		}
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil {
			return errAt(path, "want a number, got %s", n)
		}
		v.SetFloat(f)
		return nil
	case reflect.Slice:
		a, ok := d.([]any)
		if !ok {
			return errAt(path, "want an array, got %s", describe(d))
		}
		s := reflect.MakeSlice(v.Type(), len(a), len(a))
		for i, e := range a {
			if err := decode(e, s.Index(i), fmt.Sprintf("%s[%d]", path, i), unknown); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Array:
		a, ok := d.([]any)
		if !ok || len(a) != v.Len() {
			return errAt(path, "want an array of %d, got %s", v.Len(), describe(d))
		}
		for i, e := range a {
			if err := decode(e, v.Index(i), fmt.Sprintf("%s[%d]", path, i), unknown); err != nil {
				return err
			}
		}
		return nil
	case reflect.Struct:
		m, ok := d.(map[string]any)
		if !ok {
			return errAt(path, "want an object, got %s", describe(d))
		}
		return decodeStruct(m, v, path, nil, unknown)
	}
	return errAt(path, "cannot read a value of type %s", v.Type())
}

// decodeStruct sets the fields of v named in m; keys in skip are not
// fields (such as a record's "type").
func decodeStruct(m map[string]any, v reflect.Value, path string, skip map[string]bool, unknown func(string)) error {
	t := v.Type()
	known := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		name := fieldName(t.Field(i))
		if name == "" {
			continue
		}
		known[name] = true
		d, ok := m[name]
		if !ok {
			continue
		}
		if err := decode(d, v.Field(i), join(path, name), unknown); err != nil {
			return err
		}
	}
	if unknown != nil {
		for k := range m {
			if !known[k] && !skip[k] {
				unknown(join(path, k))
			}
		}
	}
	return nil
}

func decodeHist(d any, h *hist.Histogram, path string) error {
	var w struct {
		Count uint64 `json:"count"`
		SumNs uint64 `json:"sum_ns"`
		MaxNs uint64 `json:"max_ns"`
	}
	m, ok := d.(map[string]any)
	if !ok {
		return errAt(path, "want a histogram object, got %s", describe(d))
	}
	if err := decodeStruct(m, reflect.ValueOf(&w).Elem(), path, nil, nil); err != nil {
		return err
	}
	if w.MaxNs > math.MaxInt64 {
		return errAt(join(path, "max_ns"), "%d ns is beyond the clock's range", w.MaxNs)
	}
	if w.MaxNs > uint64(MaxWindow) {
		return errAt(join(path, "max_ns"), "%d ns (%s) is longer than any run (at most %s)", w.MaxNs, fmtDays(time.Duration(w.MaxNs)), fmtDays(MaxWindow))
	}
	*h = hist.Histogram{Count: w.Count, SumNs: w.SumNs, MaxNs: w.MaxNs}
	if m["slots"] == nil {
		return nil
	}
	slots, ok := m["slots"].([]any)
	if !ok {
		return errAt(join(path, "slots"), "want an array of [slot, count] pairs, got %s", describe(m["slots"]))
	}
	for i, pair := range slots {
		at := fmt.Sprintf("%s.slots[%d]", path, i)
		var p [2]uint64
		if err := decode(pair, reflect.ValueOf(&p).Elem(), at, nil); err != nil {
			return err
		}
		if p[0] >= hist.Slots {
			return errAt(at, "slot %d out of range (0..%d)", p[0], hist.Slots-1)
		}
		if c := h.Counts[p[0]] + p[1]; c >= p[1] {
			h.Counts[p[0]] = c
		} else { // the same slot twice, counts that wrap: keep the most
			h.Counts[p[0]] = math.MaxUint64
		}
	}
	return nil
}
