// Package tracefile writes and reads whyslow trace files: everything one run
// observed (the whole timeline.Timeline: probes, losses, holders, latency
// histograms and every event stream) plus what the report says about the
// run itself, so that `whyslow analyze` gives the report the live run gave.
//
// A trace is gzip-compressed JSON lines (docs/trace-format.md): a header line
// {"format":"whyslow.trace","version":1,...}, then one record per line, each
// an object with a "type", and an "end" record that counts the records, so a
// cut file is told from a complete one. Read also takes an uncompressed
// trace. It never panics on bad input: every problem is an error naming the
// line and, inside the record, the field.
package tracefile

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Format is the header's "format" value.
const Format = "whyslow.trace"

// Version is the format version this package writes and the newest it reads.
// Adding a record type or a field keeps it; changing what a field means, or
// its unit or type, bumps it.
const Version = 1

// MaxLine is the longest record Read accepts, in bytes.
const MaxLine = 16 << 20

// Info is what a trace records about the run besides its timeline: what the
// report says about the run itself.
type Info struct {
	// Version is the version of whyslow that recorded the trace.
	Version string
	// StartedAt is the wall-clock start of the run.
	StartedAt time.Time
	// Duration is the --duration asked for (the observed window is the
	// timeline's Start..End).
	Duration time.Duration
	// Devices is the --device filter of the run; empty means all.
	Devices []string

	// UnknownRecords counts, when reading, records of types this version
	// does not know (written by a newer whyslow); they are skipped.
	UnknownRecords map[string]int
	// UnknownFields lists, when reading, fields this version does not know.
	UnknownFields []string
}

// Ignored says what a newer writer recorded that this reader skipped, or "".
func (i Info) Ignored() string {
	var parts []string
	kinds := make([]string, 0, len(i.UnknownRecords))
	for k := range i.UnknownRecords {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d %q records", i.UnknownRecords[k], k))
	}
	if n := len(i.UnknownFields); n > 0 {
		parts = append(parts, fmt.Sprintf("fields %v", i.UnknownFields))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprint(parts)
}

// header is the first line.
type header struct {
	Format   string `json:"format"`
	Version  int    `json:"version"`
	Encoding string `json:"encoding"`
	Writer   string `json:"writer"`
}

// runRecord is the "run" record: Info on the wire.
type runRecord struct {
	Version      string   `json:"version"`
	StartedAt    string   `json:"started_at"`         // RFC 3339 with nanoseconds; "" when unknown
	Duration     int64    `json:"requested_duration"` // ns
	DeviceFilter []string `json:"device_filter"`
}

// Record types besides the timeline's streams.
const (
	typeRun      = "run"
	typeTimeline = "timeline"
	typeEnd      = "end"
)

// records names the record type of the slice fields of timeline.Timeline
// that are not event streams; an event stream's record type is its
// timeline.Stream's Record.
var records = map[string]string{
	"Probes":  "probe",
	"Losses":  "loss",
	"Devices": "device",
	"Holders": "holder",
}

// stream is one slice field of the timeline.
type stream struct {
	field int    // index in timeline.Timeline
	kind  string // record type
}

var timelineType = reflect.TypeFor[timeline.Timeline]()

// streams lists the slice fields of the timeline that are recorded, in
// field order: its own records and every event stream of timeline.Sources.
func streams() []stream {
	byField := map[int]string{}
	for _, s := range timeline.Streams() {
		byField[s.Field()] = s.Record()
	}
	var out []stream
	for i := 0; i < timelineType.NumField(); i++ {
		f := timelineType.Field(i)
		if !f.IsExported() || f.Type.Kind() != reflect.Slice {
			continue
		}
		k, ok := records[f.Name]
		if !ok {
			k, ok = byField[i]
		}
		if ok {
			out = append(out, stream{field: i, kind: k})
		}
	}
	return out
}

var eventType = reflect.TypeFor[event.Event]()

// Write records the timeline and the run's info as a gzip-compressed trace.
// Records come in this order: header, run, timeline, the probes, losses,
// holders and device histograms, then every event of every stream merged in
// time order, then end.
func Write(w io.Writer, tl *timeline.Timeline, info Info) error {
	if tl == nil {
		return errors.New("no timeline to record")
	}
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(zw)
	line := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		bw.Write(b)
		return bw.WriteByte('\n')
	}
	if err := line(header{Format: Format, Version: Version, Encoding: "json-lines", Writer: "whyslow " + info.Version}); err != nil {
		return err
	}
	n := 0
	var buf []byte
	record := func(kind string, v reflect.Value) error {
		n++
		var err error
		if buf, err = appendRecord(buf[:0], kind, v); err == nil {
			bw.Write(buf)
			return bw.WriteByte('\n')
		}
		// The reflective codec: values the fast one does not write, or
		// the reason a value cannot be recorded.
		m, err := encodeStruct(v)
		if err != nil {
			return fmt.Errorf("recording %s: %w", kind, err)
		}
		m["type"] = kind
		return line(m)
	}
	run := runRecord{Version: info.Version, Duration: int64(info.Duration), DeviceFilter: info.Devices}
	if !info.StartedAt.IsZero() {
		run.StartedAt = info.StartedAt.Format(time.RFC3339Nano)
	}
	if err := record(typeRun, reflect.ValueOf(run)); err != nil {
		return err
	}

	// The scalars of the timeline, then its slices.
	tv := reflect.ValueOf(tl).Elem()
	scalars := reflect.New(timelineType).Elem()
	for i := 0; i < timelineType.NumField(); i++ {
		if timelineType.Field(i).Type.Kind() != reflect.Slice && timelineType.Field(i).IsExported() {
			scalars.Field(i).Set(tv.Field(i))
		}
	}
	if err := record(typeTimeline, scalars); err != nil {
		return err
	}
	// The event streams, merged in time order; at equal times the earlier
	// stream first, and each stream in its own order, so reading them back
	// rebuilds each stream exactly. Streams are sorted, so a merge does.
	type cursor struct {
		kind string
		s    reflect.Value
		i    int
		when event.Mono // of event i
	}
	// The time of the cursor's event, read through its address: no copy,
	// no allocation.
	next := func(c *cursor) { c.when = c.s.Index(c.i).Addr().Interface().(event.Event).When() }
	var cur []*cursor
	for _, s := range streams() {
		f := tv.Field(s.field)
		if !f.Type().Elem().Implements(eventType) {
			for i := 0; i < f.Len(); i++ {
				if err := record(s.kind, f.Index(i)); err != nil {
					return err
				}
			}
			continue
		}
		if f.Len() > 0 {
			c := &cursor{kind: s.kind, s: f}
			next(c)
			cur = append(cur, c)
		}
	}
	for len(cur) > 0 {
		best := 0
		for j := 1; j < len(cur); j++ {
			if cur[j].when < cur[best].when {
				best = j
			}
		}
		c := cur[best]
		if err := record(c.kind, c.s.Index(c.i)); err != nil {
			return err
		}
		if c.i++; c.i == c.s.Len() {
			cur = slices.Delete(cur, best, best+1)
		} else {
			next(c)
		}
	}
	if err := line(map[string]any{"type": typeEnd, "records": n}); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// ReadFile reads the trace at path; its errors name the file.
func ReadFile(path string) (*timeline.Timeline, Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return nil, Info{}, fmt.Errorf("%s: a directory, not a trace file", path)
	}
	tl, info, err := Read(f)
	if err != nil {
		return nil, Info{}, fmt.Errorf("%s: %w", path, err)
	}
	return tl, info, nil
}

// gzipMagic starts every gzip stream.
var gzipMagic = []byte{0x1f, 0x8b}

// Read reads a trace, gzip-compressed or not. Its errors say what is wrong
// and on which line (of the uncompressed text).
func Read(r io.Reader) (*timeline.Timeline, Info, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(2)
	if err != nil && len(magic) == 0 {
		if !errors.Is(err, io.EOF) {
			return nil, Info{}, fmt.Errorf("read error: %w", err)
		}
		return nil, Info{}, errors.New("empty file: not a whyslow trace")
	}
	var src io.Reader = br
	compressed := bytes.Equal(magic, gzipMagic)
	if compressed {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, Info{}, fmt.Errorf("corrupt gzip header: %w", err)
		}
		defer zr.Close()
		src = zr
	} else if len(magic) == 0 || magic[0] != '{' {
		return nil, Info{}, errors.New("not a whyslow trace: neither gzip-compressed nor a JSON trace header")
	}
	rd := &reader{br: bufio.NewReaderSize(src, 64<<10), compressed: compressed}
	tl, info, err := rd.read()
	if err != nil {
		return nil, Info{}, err
	}
	return tl, info, nil
}

type reader struct {
	br         *bufio.Reader
	compressed bool
	line       int
	buf        []byte // a line longer than br's buffer
}

// next returns the next line without its newline; io.EOF at a clean end.
// The line is valid until the next call.
func (rd *reader) next() ([]byte, error) {
	chunk, err := rd.br.ReadSlice('\n')
	if err == nil { // the common case: the whole line in the buffer
		rd.line++
		return chunk[:len(chunk)-1], nil
	}
	buf := append(rd.buf[:0], chunk...)
	defer func() { rd.buf = buf[:0] }()
	for {
		if len(buf) > MaxLine {
			return nil, fmt.Errorf("line %d: longer than %d bytes", rd.line+1, MaxLine)
		}
		switch {
		case err == nil:
			rd.line++
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			chunk, err = rd.br.ReadSlice('\n')
			buf = append(buf, chunk...)
		case errors.Is(err, io.EOF):
			if len(buf) > 0 {
				rd.line++
				return nil, fmt.Errorf("line %d: truncated: the file ends inside a record", rd.line)
			}
			return nil, io.EOF
		default:
			what := "read error"
			if rd.compressed {
				what = "truncated or corrupt compressed data"
				if errors.Is(err, io.ErrUnexpectedEOF) {
					what = "truncated: the compressed data ends early"
				}
			}
			if len(buf) == 0 { // between lines: none of the next one was read
				return nil, fmt.Errorf("after line %d: %s (%v)", rd.line, what, err)
			}
			return nil, fmt.Errorf("line %d: %s (%v)", rd.line+1, what, err)
		}
	}
}

func (rd *reader) read() (*timeline.Timeline, Info, error) {
	var info Info
	first, err := rd.next()
	if err == io.EOF {
		return nil, info, errors.New("not a whyslow trace: empty")
	}
	if err != nil {
		if rd.line == 0 && !rd.compressed {
			return nil, info, errors.New("not a whyslow trace: no header line")
		}
		return nil, info, err
	}
	var h header
	if err := json.Unmarshal(first, &h); err != nil || h.Format != Format {
		var format struct {
			Format string `json:"format"`
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && json.Unmarshal(first, &format) == nil && format.Format == Format {
			return nil, info, fmt.Errorf("line 1: trace header: field %s: want %s, got %s", te.Field, jsonType(te.Type), te.Value)
		}
		return nil, info, fmt.Errorf("not a whyslow trace: line 1 is not a %q header", Format)
	}
	switch {
	case h.Version > Version:
		return nil, info, fmt.Errorf("trace format version %d is newer than this whyslow reads (%d): it was written by %s; use that version or newer", h.Version, Version, clip(h.Writer))
	case h.Version < 1:
		return nil, info, fmt.Errorf("line 1: bad trace format version %d", h.Version)
	}
	if h.Encoding != "" && h.Encoding != "json-lines" {
		return nil, info, fmt.Errorf("line 1: unknown encoding %q", clip(h.Encoding))
	}

	st := &readState{
		tl:            &timeline.Timeline{},
		byKind:        map[string]int{},
		unknownFields: map[string]bool{},
		seen:          map[string]bool{},
		fast:          newFastReader(),
	}
	st.tv = reflect.ValueOf(st.tl).Elem()
	for _, s := range streams() {
		st.byKind[s.kind] = s.field
	}
	for {
		b, err := rd.next()
		if err == io.EOF {
			return nil, info, fmt.Errorf("truncated: the trace ends after line %d without its end record", rd.line)
		}
		if err != nil {
			return nil, info, err
		}
		if st.fastEvent(b) {
			continue
		}
		end, err := st.record(rd, b, &info)
		if err != nil {
			return nil, info, err
		}
		if end {
			break
		}
	}
	tl, seen, unknownFields := st.tl, st.seen, st.unknownFields
	if !seen[typeTimeline] {
		return nil, info, errors.New("the trace has no timeline record")
	}
	for f := range unknownFields {
		info.UnknownFields = append(info.UnknownFields, clip(f))
	}
	sort.Strings(info.UnknownFields)
	clipStreams(st.tv)
	tl.Sort()
	return tl, info, nil
}

// clipStreams copies each event stream that grow left with much unused
// capacity (up to half of it) into one of its length: the timeline lives as
// long as the analysis, so what it wastes counts twice in the heap the
// garbage collector lets grow.
func clipStreams(tv reflect.Value) {
	for _, s := range streams() {
		f := tv.Field(s.field)
		if n := f.Len(); f.Cap()-n > n/8 && f.Cap()-n > 1024 {
			exact := reflect.MakeSlice(f.Type(), n, n)
			reflect.Copy(exact, f)
			f.Set(exact)
		}
	}
}

// readState is what reading a trace has gathered so far.
type readState struct {
	tl            *timeline.Timeline
	tv            reflect.Value
	byKind        map[string]int // record type -> stream field
	unknownFields map[string]bool
	seen          map[string]bool
	records       int
	fast          *fastReader
}

// fastEvent reads line b if it is an event of a stream that the fast codec
// decodes (nearly all of a trace); false leaves the line to record.
func (st *readState) fastEvent(b []byte) bool {
	if !st.seen[typeRun] || !st.seen[typeTimeline] {
		return false
	}
	var f reflect.Value // the stream the record goes to
	slot := func(kind string) reflect.Value {
		idx, ok := st.byKind[kind]
		if !ok {
			return reflect.Value{}
		}
		f = st.tv.Field(idx)
		return grow(f)
	}
	kind, ok := st.fast.record(b, slot)
	if ok && checkRange(f.Index(f.Len()-1), st.tl) != nil {
		ok = false // the reflective path says what is wrong
	}
	if !ok {
		if f.IsValid() {
			f.SetLen(f.Len() - 1)
		}
		// Another key order: find the type first, then the fields.
		if kind, ok = st.fast.scan(b); !ok {
			return false
		}
		e := slot(kind)
		if !e.IsValid() {
			return false
		}
		if !st.fast.decode(e) || checkRange(e, st.tl) != nil {
			f.SetLen(f.Len() - 1)
			return false
		}
	}
	for _, k := range st.fast.unknown {
		st.unknownFields[kind+"."+k] = true
	}
	st.records++
	st.seen[kind] = true
	return true
}

// grow appends a zero element to slice s, doubling its capacity when full
// (append grows large slices by a quarter: five times the final size
// allocated on the way to a million events), and returns the element.
func grow(s reflect.Value) reflect.Value {
	n := s.Len()
	if n == s.Cap() {
		bigger := reflect.MakeSlice(s.Type(), n, max(2*n, 64))
		reflect.Copy(bigger, s)
		s.Set(bigger)
	}
	s.SetLen(n + 1)
	e := s.Index(n)
	e.SetZero()
	return e
}

// record reads line b with the reflective codec: every record that is not
// a plain event, and any line the fast codec gives up on (it then says what
// is wrong). end is true after the end record.
func (st *readState) record(rd *reader, b []byte, info *Info) (end bool, err error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return false, fmt.Errorf("line %d: empty line", rd.line)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return false, fmt.Errorf("line %d: not a JSON object: %v", rd.line, jsonErr(err))
	}
	if dec.More() {
		return false, fmt.Errorf("line %d: more than one JSON value", rd.line)
	}
	kind, ok := m["type"].(string)
	if !ok {
		return false, fmt.Errorf("line %d: record has no \"type\"", rd.line)
	}
	fail := func(err error) error { return fmt.Errorf("line %d: %s record: %w", rd.line, clip(kind), err) }
	unknown := func(f string) { st.unknownFields[kind+"."+f] = true }
	skip := map[string]bool{"type": true}
	if kind == typeEnd {
		var end struct {
			Records int `json:"records"`
		}
		if err := decodeStruct(m, reflect.ValueOf(&end).Elem(), "", skip, nil); err != nil {
			return false, fail(err)
		}
		if end.Records != st.records {
			return false, fmt.Errorf("line %d: the end record counts %d records, the trace has %d: records are missing", rd.line, end.Records, st.records)
		}
		switch _, err := rd.next(); {
		case err == nil:
			return false, fmt.Errorf("line %d: data after the end record", rd.line)
		case err != io.EOF:
			return false, err
		}
		return true, nil
	}
	st.records++
	seen := st.seen
	if (kind == typeRun || kind == typeTimeline) && seen[kind] {
		return false, fmt.Errorf("line %d: a second %s record", rd.line, kind)
	}
	if kind != typeRun && !seen[typeRun] || kind != typeRun && kind != typeTimeline && !seen[typeTimeline] {
		return false, fmt.Errorf("line %d: %s record before the run and timeline records", rd.line, clip(kind))
	}
	seen[kind] = true
	switch kind {
	case typeRun:
		var run runRecord
		if err := decodeStruct(m, reflect.ValueOf(&run).Elem(), "", skip, unknown); err != nil {
			return false, fail(err)
		}
		if run.Duration < 0 {
			return false, fail(errAt("requested_duration", "a duration cannot be negative, got %d", run.Duration))
		}
		if run.Duration > int64(MaxWindow) {
			return false, fail(errAt("requested_duration", "%d ns (%s) is longer than any run (at most %s)", run.Duration, fmtDays(time.Duration(run.Duration)), fmtDays(MaxWindow)))
		}
		info.Version, info.Duration, info.Devices = run.Version, time.Duration(run.Duration), run.DeviceFilter
		if run.StartedAt != "" {
			t, err := time.Parse(time.RFC3339Nano, run.StartedAt)
			if err != nil {
				return false, fail(fmt.Errorf("field started_at: %v", err))
			}
			info.StartedAt = t
		}
	case typeTimeline:
		scalars := reflect.New(timelineType).Elem()
		if err := decodeStruct(m, scalars, "", skip, unknown); err != nil {
			return false, fail(err)
		}
		if err := checkRange(scalars, nil); err != nil {
			return false, fail(err)
		}
		w := scalars.Interface().(timeline.Timeline)
		if w.End < w.Start {
			return false, fail(errAt("end", "the window ends (%d) before it starts (%d)", w.End, w.Start))
		}
		if w.End.Sub(w.Start) > MaxWindow {
			return false, fail(errAt("end", "a window of %s (%d to %d) is longer than any run (at most %s)", fmtDays(w.End.Sub(w.Start)), w.Start, w.End, fmtDays(MaxWindow)))
		}
		for i := 0; i < timelineType.NumField(); i++ {
			if timelineType.Field(i).Type.Kind() == reflect.Slice {
				if _, ok := m[fieldName(timelineType.Field(i))]; ok {
					return false, fail(fmt.Errorf("field %s: a stream inside the timeline record", fieldName(timelineType.Field(i))))
				}
			} else if timelineType.Field(i).IsExported() {
				st.tv.Field(i).Set(scalars.Field(i))
			}
		}
	default:
		idx, ok := st.byKind[kind]
		if !ok {
			if info.UnknownRecords == nil {
				info.UnknownRecords = map[string]int{}
			}
			info.UnknownRecords[clip(kind)]++
			return false, nil
		}
		f := st.tv.Field(idx)
		e := reflect.New(f.Type().Elem()).Elem()
		if err := decodeStruct(m, e, "", skip, unknown); err != nil {
			return false, fail(err)
		}
		if err := checkRange(e, st.tl); err != nil {
			return false, fail(err)
		}
		f.Set(reflect.Append(f, e))
	}
	return false, nil
}

var (
	monoType     = reflect.TypeFor[event.Mono]()
	durationType = reflect.TypeFor[time.Duration]()
)

// Bounds of the values a trace may hold: beyond them, no run can have
// recorded a value (docs/trace-format.md). Reading a trace that holds one
// is an error naming the line and the field, not a report changed
// silently by an impossible value.
const (
	// MaxWindow is the longest observation window (timeline end minus
	// start), --duration and any duration or latency (a span, a
	// histogram's max_ns): 366 days. diagnose refuses a longer --duration.
	MaxWindow = 366 * 24 * time.Hour
	// EventSlack is how far before the window's start or after its end an
	// event may be: probes start just after the window does and stop just
	// after it ends (an exec's fork time, which may be long before, is
	// not bound).
	EventSlack = time.Hour
)

// fmtDays shows a long duration in days: "366 days".
func fmtDays(d time.Duration) string { return fmt.Sprintf("%d days", d/(24*time.Hour)) }

// checkRange rejects the values of a record that no run can have: a
// negative time (CLOCK_MONOTONIC counts from boot) or duration (an end minus
// its start), a duration longer than MaxWindow, a span whose end, start
// plus its duration or latency, is beyond the clock's range, and, given
// the run's window, an event whose time (its start) is more than
// EventSlack outside it. It looks at every time and duration field of the
// record's struct, so that a field added to an event is checked too.
func checkRange(v reflect.Value, window *timeline.Timeline) error {
	t := v.Type()
	if t.Kind() != reflect.Struct {
		return nil
	}
	var start int64
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Type != monoType && f.Type != durationType {
			continue
		}
		n := v.Field(i).Int()
		if n < 0 {
			what := "a time (nanoseconds of CLOCK_MONOTONIC)"
			if f.Type == durationType {
				what = "a duration"
			}
			return errAt(fieldName(f), "%s cannot be negative, got %d", what, n)
		}
		if f.Type == durationType && n > int64(MaxWindow) {
			return errAt(fieldName(f), "%d ns (%s) is longer than any run (at most %s)", n, fmtDays(time.Duration(n)), fmtDays(MaxWindow))
		}
		if f.Type == monoType && (f.Name == "Start" || f.Name == "Time") {
			start = n
			if window != nil && (n < int64(window.Start)-int64(EventSlack) || n > int64(window.End)+int64(EventSlack)) {
				return errAt(fieldName(f), "%d is outside the run's window (%d to %d) by more than %s", n, window.Start, window.End, EventSlack)
			}
		}
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Type == durationType && (f.Name == "Duration" || f.Name == "Latency") {
			if d := v.Field(i).Int(); d > math.MaxInt64-start {
				return errAt(fieldName(f), "start %d + %d ns is beyond the clock's range", start, d)
			}
		}
	}
	return nil
}

// jsonType names a Go type as a trace's reader would: "an integer".
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.String:
		return "a string"
	}
	return t.String()
}

// jsonErr shortens a JSON syntax error.
func jsonErr(err error) string {
	if err == nil {
		return "null"
	}
	return err.Error()
}

// clip keeps strings from a hostile file short in error messages, quoted
// when they hold anything unusual.
func clip(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	q := fmt.Sprintf("%q", s)
	if q[1:len(q)-1] == s {
		return s
	}
	return q
}
