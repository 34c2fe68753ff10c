package tracefile

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/quick"
	"unicode/utf8"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// reflectiveLine is a record as the reflective codec writes it, its keys in
// order.
func reflectiveLine(t testing.TB, kind string, v reflect.Value) []byte {
	t.Helper()
	m, err := encodeStruct(v)
	if err != nil {
		t.Fatalf("encodeStruct: %v", err)
	}
	m["type"] = kind
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// typeFirst is what the fast codec writes for a record: the reflective
// codec's bytes with "type" moved to the front.
func typeFirst(t testing.TB, kind string, v reflect.Value) []byte {
	t.Helper()
	m, err := encodeStruct(v)
	if err != nil {
		t.Fatalf("encodeStruct: %v", err)
	}
	rest, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := json.Marshal(kind)
	b := append([]byte(`{"type":`), k...)
	if len(rest) > 2 {
		b = append(append(b, ','), rest[1:]...)
		return b
	}
	return append(b, '}')
}

// reflectiveDecode reads line into a new value of type typ as the
// reflective codec does; ok false when it refuses the line.
func reflectiveDecode(line []byte, typ reflect.Type) (v reflect.Value, unknown []string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil || dec.More() {
		return v, nil, false
	}
	if _, ok := m["type"].(string); !ok {
		return v, nil, false
	}
	v = reflect.New(typ).Elem()
	err := decodeStruct(m, v, "", map[string]bool{"type": true}, func(f string) { unknown = append(unknown, f) })
	slices.Sort(unknown)
	return v, unknown, err == nil
}

// streamValues returns every event of the timeline with its record type.
func streamValues(tl *timeline.Timeline) (kinds []string, vs []reflect.Value) {
	tv := reflect.ValueOf(tl).Elem()
	for _, s := range streams() {
		f := tv.Field(s.field)
		for i := 0; i < f.Len(); i++ {
			kinds = append(kinds, s.kind)
			vs = append(vs, f.Index(i))
		}
	}
	return kinds, vs
}

// validUTF8 reports whether every string in v is valid UTF-8.
func validUTF8(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String:
		return utf8.ValidString(v.String())
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if !validUTF8(v.Index(i)) {
				return false
			}
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if !validUTF8(v.Field(i)) {
				return false
			}
		}
	}
	return true
}

// holdsHist reports whether a struct type has a histogram field: such
// records (few: one per process, device and call) take the reflective codec.
func holdsHist(t reflect.Type) bool {
	for i := range t.NumField() {
		if t.Field(i).Type == histType {
			return true
		}
	}
	return false
}

// The fast codec must write the bytes the reflective one writes, and read
// back the values the reflective one reads, for every record of a stream
// (the histograms and anything unusual go through the reflective codec on
// purpose). It must also take the common records itself: without that, the
// speed of reading a trace is gone without a failing test.
func TestFastCodecMatchesReflective(t *testing.T) {
	tls := []*timeline.Timeline{sample()}
	rnd := rand.New(rand.NewSource(7))
	for i := 0; i < 40; i++ {
		v, _ := quick.Value(timelineType, rnd)
		tls = append(tls, v.Addr().Interface().(*timeline.Timeline))
	}
	hostile := &timeline.Timeline{}
	for _, s := range []string{"", "plain", "quote \" and \\ backslash", "<script>&amp;</script>", "\x00\x01\x1f\x7f", "tab\tnl\nret\r\b\f",
		"\u2028\u2029", "héllo wörld", "emoji \U0001F600", "\ufffd", strings.Repeat("x", 5000)} {
		hostile.Add(event.Exec{Task: event.Task{Pid: 1, Comm: s}, Filename: s, Args: []string{s, "", s}, ParentComm: s})
		hostile.Add(event.OffCPU{Task: event.Task{Comm: s}, KernelStack: []event.Frame{{Addr: 1, Symbol: s, Module: s}}, UserStack: []event.Frame{}})
	}
	tls = append(tls, hostile)

	fastWrites, fastReads := 0, 0
	for _, tl := range tls {
		kinds, vs := streamValues(tl)
		for i, v := range vs {
			want := reflectiveLine(t, kinds[i], v)
			got, err := appendRecord(nil, kinds[i], v)
			if err == nil && !bytes.Equal(got, typeFirst(t, kinds[i], v)) {
				t.Fatalf("%s record: fast codec wrote\n%s\nwant\n%s", kinds[i], got, typeFirst(t, kinds[i], v))
			}
			// Histograms (device records, events that hold one) are for
			// the reflective codec.
			valid := validUTF8(v) && v.Type().Implements(eventType) && !holdsHist(v.Type())
			switch {
			case err == nil:
				fastWrites++
				// Its own lines, in one pass.
				r := newFastReader()
				gotV := reflect.New(v.Type()).Elem()
				kind, ok := r.record(got, func(string) reflect.Value { return gotV })
				if !ok || kind != kinds[i] || !reflect.DeepEqual(gotV.Interface(), v.Interface()) || len(r.unknown) > 0 {
					t.Fatalf("%s record: reading back its own line %s gave %q %+v %v", kinds[i], got, kind, gotV, ok)
				}
			case valid:
				t.Fatalf("%s record: the fast codec refused a record with valid strings: %v", kinds[i], err)
			}

			wantV, wantUnknown, ok := reflectiveDecode(want, v.Type())
			if !ok {
				// Values no run has (random histograms beyond int64):
				// the reflective codec refuses them, as it should.
				continue
			}
			r := newFastReader()
			kind, ok := r.scan(want)
			if !ok || kind != kinds[i] {
				t.Fatalf("%s record: scan = %q, %v", kinds[i], kind, ok)
			}
			gotV := reflect.New(v.Type()).Elem()
			if !r.decode(gotV) {
				if valid {
					t.Fatalf("%s record: the fast codec refused a line with valid strings: %s", kinds[i], want)
				}
				continue
			}
			fastReads++
			if !reflect.DeepEqual(gotV.Interface(), wantV.Interface()) || len(r.unknown)+len(wantUnknown) > 0 {
				t.Fatalf("%s record %s: fast codec read %+v (unknown %v), reflective %+v (unknown %v)", kinds[i], want, gotV, r.unknown, wantV, wantUnknown)
			}
		}
	}
	if fastWrites == 0 || fastReads == 0 {
		t.Fatalf("the fast codec wrote %d and read %d records: it is not used", fastWrites, fastReads)
	}
}

// What the fast decoder accepts, the reflective one accepts too, with the
// same value and the same unknown fields; what it refuses goes to the
// reflective one, so only acceptance needs checking.
func FuzzFastDecode(f *testing.F) {
	for _, tl := range []*timeline.Timeline{sample()} {
		kinds, vs := streamValues(tl)
		for i, v := range vs {
			f.Add(reflectiveLine(f, kinds[i], v))
			if b, err := appendRecord(nil, kinds[i], v); err == nil {
				f.Add(b)
			}
		}
	}
	for _, s := range []string{
		`{"type":"exit","pid":1,"pid":2}`,
		`{"type":"exit","time":-5,"exit_code":-2147483648}`,
		`{"type":"exit","time":1e3}`,
		`{"type":"exit","time":1.0}`,
		`{"type":"exit","pid":4294967296}`,
		`{"type":"exec","args":["a\u0000b","\ud83d\ude00","\ud800x","\udc00"],"task":{"comm":"\u00e9"}}`,
		`{"type":"exec","task":{"comm":{"base64":"/w=="}}}`,
		`{"type":"exec","task":{"pid":1,"nope":2}}`,
		`{"type":"exec","extra":{"a":[1,2,{"b":null}]},"args":null}`,
		`{"type":"offcpu","kernel_stack":[{"addr":1,"symbol":"a"},{"addr":2}],"user_stack":[]}`,
		`{"type":"uevent" , "action" : "change" }  `,
		` {"ty\u0070e":"uevent","seqnum":18446744073709551615}`,
		`{"type":"uevent","type":"exit","pid":3}`,
		`{"type":"exit","pid":3,"type":"uevent"}`,
		`{"type":"exit","pid":3,"zzz":[[[]]],"aaa":{}}`,
		`{"type":"exit"}{}`,
		`{"type":"exit",}`,
		`{"type":7}`,
		"{\"type\":\"exec\",\"filename\":\"\xff\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	typs := map[string]reflect.Type{}
	for _, s := range streams() {
		typs[s.kind] = timelineType.Field(s.field).Type.Elem()
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r := newFastReader()
		var gotV reflect.Value
		kind, ok := r.record(line, func(k string) reflect.Value {
			if typs[k] == nil {
				return reflect.Value{}
			}
			gotV = reflect.New(typs[k]).Elem()
			return gotV
		})
		if !ok {
			if kind, ok = r.scan(line); !ok || typs[kind] == nil {
				return
			}
			gotV = reflect.New(typs[kind]).Elem()
			if !r.decode(gotV) {
				return
			}
		}
		typ := typs[kind]
		wantV, wantUnknown, ok := reflectiveDecode(line, typ)
		if !ok {
			t.Fatalf("the fast codec read %q, the reflective one refuses it", line)
		}
		unknown := slices.Clone(r.unknown)
		slices.Sort(unknown)
		unknown = slices.Compact(unknown)
		if !reflect.DeepEqual(gotV.Interface(), wantV.Interface()) || !slices.Equal(unknown, wantUnknown) {
			t.Fatalf("%q: fast codec read %+v (unknown %v), reflective %+v (unknown %v)", line, gotV, unknown, wantV, wantUnknown)
		}
	})
}

// The fast codec escapes strings exactly as encoding/json does.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", "<>&", "\u2028", "\x00\x1f", "é", "\"\\", "\b\f\n\r\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, encoding/json %s", s, got, want)
		}
	})
}
