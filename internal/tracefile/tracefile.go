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
	"sort"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

// Format is the header's "format" value.
const Format = "whyslow.trace"

// Version is the format version this package writes and the newest it
// reads; it reads every older one. Adding a record type or a field keeps
// it; changing what a field means, or its unit or type, bumps it. Version 2
// is streamed (Recorder): its timeline record's end is its start, and each
// checkpoint record moves it and commits the state records (probe, loss,
// device) written since the previous one.
const Version = 2

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

	// Incomplete says, when reading, that the trace was cut (the run was
	// killed or the machine lost power as it recorded, or the file was
	// truncated): it was read up to its last complete record, with the
	// state (probes, losses, histograms) of its last checkpoint, and the
	// timeline's window ends there. Cut says where and why.
	Incomplete bool
	Cut        string
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
	// typeTrouble holds what the trouble watcher saw over the run
	// (timeline.Trouble), written once at the end, so that a trace's
	// report has the live one's trouble section.
	typeTrouble = "trouble"
	// typeCoverage holds when the hot-hook programs were attached, for a
	// run in an armed mode (timeline.Coverage), written once at the end
	// after the trouble record.
	typeCoverage = "coverage"
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

// Options are how a trace is read.
type Options struct {
	// MaxEventBytes bounds the memory the events read take, as a live
	// run's (timeline.Bound): past it, events are dropped and counted as
	// lost ("timeline full"), so that a small file that expands to
	// millions of events cannot exhaust the memory. 0 means the bound of a
	// live run, timeline.DefaultMaxEventBytes; negative, none.
	MaxEventBytes int64
}

// ReadFile reads the trace at path with the bound of a live run; its
// errors name the file.
func ReadFile(path string) (*timeline.Timeline, Info, error) {
	return ReadFileWith(path, Options{})
}

// ReadFileWith reads the trace at path; its errors name the file.
func ReadFileWith(path string, o Options) (*timeline.Timeline, Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return nil, Info{}, fmt.Errorf("%s: a directory, not a trace file", path)
	}
	tl, info, err := ReadWith(f, o)
	if err != nil {
		return nil, Info{}, fmt.Errorf("%s: %w", path, err)
	}
	return tl, info, nil
}

// gzipMagic starts every gzip stream.
var gzipMagic = []byte{0x1f, 0x8b}

// Read reads a trace, gzip-compressed or not, with the bound of a live run.
// Its errors say what is wrong and on which line (of the uncompressed text).
func Read(r io.Reader) (*timeline.Timeline, Info, error) { return ReadWith(r, Options{}) }

// ReadWith reads a trace, gzip-compressed or not.
func ReadWith(r io.Reader, o Options) (*timeline.Timeline, Info, error) {
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
	rd := &reader{br: bufio.NewReaderSize(src, 64<<10), compressed: compressed, maxEventBytes: o.MaxEventBytes}
	if o.MaxEventBytes < 0 {
		rd.maxEventBytes = math.MaxInt64
	}
	tl, info, err := rd.read()
	if err != nil {
		return nil, Info{}, err
	}
	return tl, info, nil
}

type reader struct {
	br            *bufio.Reader
	compressed    bool
	maxEventBytes int64
	line          int
	buf           []byte // a line longer than br's buffer
}

// cutError is a trace that ends early: the data stops inside a record, or
// the compressed data is cut or damaged (a file that was being written
// when the run was killed or the machine lost power).
type cutError struct {
	msg     string
	early   bool // the compressed data ends early: cut
	damaged bool // the compressed data is damaged (or a torn end's junk)
}

func (e *cutError) Error() string { return e.msg }

func cutf(format string, a ...any) error { return &cutError{msg: fmt.Sprintf(format, a...)} }

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
				return nil, cutf("line %d: truncated: the file ends inside a record", rd.line)
			}
			return nil, io.EOF
		default:
			if !rd.compressed {
				return nil, fmt.Errorf("line %d: read error (%v)", rd.line+1, err)
			}
			what := "truncated or corrupt compressed data"
			if errors.Is(err, io.ErrUnexpectedEOF) {
				what = "truncated: the compressed data ends early"
			}
			var cut *cutError
			if len(buf) == 0 { // between lines: none of the next one was read
				cut = &cutError{msg: fmt.Sprintf("after line %d: %s (%v)", rd.line, what, err)}
			} else {
				cut = &cutError{msg: fmt.Sprintf("line %d: %s (%v)", rd.line+1, what, err)}
			}
			cut.early = errors.Is(err, io.ErrUnexpectedEOF)
			cut.damaged = !cut.early
			return nil, cut
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
		version:       h.Version,
		tl:            &timeline.Timeline{},
		staged:        &timeline.Timeline{},
		byKind:        map[string]int{},
		streamOf:      map[string]timeline.Stream{},
		unknownFields: map[string]bool{},
		seen:          map[string]bool{},
		fast:          newFastReader(),
		bound:         timeline.Bound{Max: rd.maxEventBytes},
	}
	st.tv = reflect.ValueOf(st.tl).Elem()
	st.sv = reflect.ValueOf(st.staged).Elem()
	for _, s := range streams() {
		st.byKind[s.kind] = s.field
	}
	for _, s := range timeline.Streams() {
		st.streamOf[s.Record()] = s
	}
	for {
		b, err := rd.next()
		if err == io.EOF {
			err = cutf("truncated: the trace ends after line %d without its end record", rd.line)
		}
		var cut *cutError
		if errors.As(err, &cut) {
			if err := st.cut(cut, &info); err != nil {
				return nil, info, err
			}
			break
		}
		if err != nil {
			return nil, info, err
		}
		st.line = rd.line
		if st.fastEvent(b) {
			continue
		}
		end, err := st.record(rd, b, &info)
		if err != nil && !errors.As(err, &cut) && st.version >= 2 && st.checkpoints > 0 && !st.atEnd && rd.tornTail() {
			// A damaged record after the last checkpoint, in a trace that
			// ends torn: the end of a file that was being written.
			err = cutf("%s, in the torn end of the trace", err)
		}
		if errors.As(err, &cut) {
			if err := st.cut(cut, &info); err != nil {
				return nil, info, err
			}
			break
		}
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
	if err := st.checkWindow(); err != nil {
		return nil, info, err
	}
	for f := range unknownFields {
		info.UnknownFields = append(info.UnknownFields, clip(f))
	}
	sort.Strings(info.UnknownFields)
	// Events past the memory bound: dropped as a live run drops them, and
	// counted.
	for _, l := range st.bound.Dropped() {
		tl.AddLoss(l)
	}
	clipStreams(st.tv)
	tl.Sort()
	return tl, info, nil
}

// tornTail says whether what follows the current line is the torn end of a
// trace cut as it was written: no checkpoint or end record, then a cut or
// the end of the data. A damaged record followed by a checkpoint is
// damage, not a cut.
func (rd *reader) tornTail() bool {
	for {
		b, err := rd.next()
		if err != nil {
			var cut *cutError
			return err == io.EOF || errors.As(err, &cut)
		}
		var r struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(b, &r) == nil && (r.Type == typeCheckpoint || r.Type == typeEnd) {
			return false
		}
	}
}

// cut ends the reading of a trace that ends early: a trace cut after its
// run, window and (for a streamed one) first checkpoint is read up to its
// last complete record, with the state of its last checkpoint, and is
// Incomplete; one cut before is the error.
func (st *readState) cut(cut *cutError, info *Info) error {
	switch {
	case !st.seen[typeTimeline]:
		return cut
	case st.version < 2 && !cut.early && cut.damaged:
		// A trace written at once, damaged rather than cut.
		return cut
	case st.version >= 2 && st.checkpoints == 0:
		return fmt.Errorf("%s, before its first checkpoint: it holds nothing of the run", cut)
	case st.version >= 2:
		// The state records after the last checkpoint may be partial.
		st.staged, st.stagedAny = &timeline.Timeline{}, false
	default:
		// A trace written at once, cut: its events are in time order, and
		// it holds the run up to the last one read.
		st.tl.End = max(st.tl.Start, min(st.tl.End, st.lastEvent))
	}
	info.Incomplete, info.Cut = true, cut.msg
	return nil
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
	version       int // of the format
	tl            *timeline.Timeline
	tv            reflect.Value
	byKind        map[string]int // record type -> stream field
	streamOf      map[string]timeline.Stream
	unknownFields map[string]bool
	seen          map[string]bool
	records       int
	fast          *fastReader
	bound         timeline.Bound
	requested     time.Duration // the run's --duration
	// window bounds the times of events: the timeline (version 1), or its
	// start and the run's requested duration (version 2, whose window's end
	// comes with the checkpoints).
	window *timeline.Timeline
	// The state records (probe, loss, device) since the last checkpoint
	// (version 2), which the next one commits.
	staged      *timeline.Timeline
	sv          reflect.Value
	stagedAny   bool
	checkpoints int
	atEnd       bool       // the end record was read
	lastEvent   event.Mono // the latest event time read
	// line is the line being read; earliest and latest the events of a
	// streamed trace checked against its window at the end.
	line             int
	earliest, latest extreme
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
		if st.version >= 2 && stateKinds[kind] {
			f = st.sv.Field(idx) // committed by the next checkpoint
		}
		return grow(f)
	}
	kind, ok := st.fast.record(b, slot)
	if ok && checkRange(f.Index(f.Len()-1), st.window) != nil {
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
		if !st.fast.decode(e) || checkRange(e, st.window) != nil {
			f.SetLen(f.Len() - 1)
			return false
		}
	}
	for _, k := range st.fast.unknown {
		st.unknownFields[kind+"."+k] = true
	}
	st.records++
	st.seen[kind] = true
	if st.version >= 2 && stateKinds[kind] {
		st.stagedAny = true
	}
	st.admit(kind, f)
	return true
}

// admit bounds the event just appended to stream f of record type kind by
// the memory bound of a live run; past it the event is dropped, counted.
func (st *readState) admit(kind string, f reflect.Value) {
	s := st.streamOf[kind]
	if s == nil || st.version >= 2 && stateKinds[kind] {
		return // state: the sums of a checkpoint replace the last ones, bounded by the probe's maps
	}
	w := f.Index(f.Len() - 1).Addr().Interface().(event.Event).When()
	st.lastEvent = max(st.lastEvent, w)
	if st.version >= 2 {
		// The window's end comes with the last checkpoint: the events
		// farthest from it are checked against it at the end.
		if st.earliest.kind == "" || w < st.earliest.when {
			st.earliest = extreme{when: w, kind: kind, line: st.line}
		}
		if st.latest.kind == "" || w > st.latest.when {
			st.latest = extreme{when: w, kind: kind, line: st.line}
		}
	}
	st.bound.AdmitLast(st.tl, s)
}

// extreme is the earliest or latest event of a streamed trace, and where.
type extreme struct {
	when event.Mono
	kind string
	line int
}

// checkWindow checks the earliest and latest event of a streamed trace
// against its window, known once its last checkpoint is read: as
// checkRange does for the events of a trace written at once.
func (st *readState) checkWindow() error {
	lo, hi := st.tl.Start.Add(-EventSlack), st.tl.End.Add(EventSlack)
	for _, e := range []extreme{st.earliest, st.latest} {
		if e.kind != "" && (e.when < lo || e.when > hi) {
			field := "time"
			if s := st.streamOf[e.kind]; s != nil && s.Type().Field(0).Name == "Start" {
				field = "start"
			}
			return fmt.Errorf("line %d: %s record: field %s: %d is outside the run's window (%d to %d) by more than %s", e.line, clip(e.kind), field, e.when, st.tl.Start, st.tl.End, EventSlack)
		}
	}
	return nil
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
		st.atEnd = true
		var end struct {
			Records int `json:"records"`
		}
		if err := decodeStruct(m, reflect.ValueOf(&end).Elem(), "", skip, nil); err != nil {
			return false, fail(err)
		}
		if end.Records != st.records {
			return false, fmt.Errorf("line %d: the end record counts %d records, the trace has %d: records are missing", rd.line, end.Records, st.records)
		}
		if st.version >= 2 && (st.checkpoints == 0 || st.stagedAny) {
			return false, fmt.Errorf("line %d: the end record does not follow a checkpoint: the trace's last state is missing", rd.line)
		}
		var cut *cutError
		switch _, err := rd.next(); {
		case err == nil:
			return false, fmt.Errorf("line %d: data after the end record", rd.line)
		case errors.As(err, &cut) && cut.early:
			// Only the compressed stream's trailer is cut: every record
			// was read, the end record says so.
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
		st.requested = time.Duration(run.Duration)
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
		st.window = st.tl
		if st.version >= 2 {
			// The end comes with the checkpoints: the events are checked
			// against it at the end (checkWindow).
			st.window = nil
		}
	case typeTrouble:
		var rec struct {
			Summary *trouble.Summary `json:"summary"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			return false, fail(fmt.Errorf("%s", jsonErr(err)))
		}
		if rec.Summary == nil {
			return false, fail(errors.New("no summary"))
		}
		st.tl.Trouble = rec.Summary
	case typeCoverage:
		var rec struct {
			Coverage *trouble.Coverage `json:"coverage"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			return false, fail(fmt.Errorf("%s", jsonErr(err)))
		}
		if rec.Coverage == nil {
			return false, fail(errors.New("no coverage"))
		}
		st.tl.Coverage = rec.Coverage
	case typeCheckpoint:
		if st.version < 2 {
			return false, st.unknownRecord(kind, info)
		}
		var cp struct {
			Time event.Mono `json:"time"`
		}
		if err := decodeStruct(m, reflect.ValueOf(&cp).Elem(), "", skip, unknown); err != nil {
			return false, fail(err)
		}
		if cp.Time < st.tl.End {
			return false, fail(errAt("time", "%d is before the previous checkpoint or the start (%d)", cp.Time, st.tl.End))
		}
		if cp.Time.Sub(st.tl.Start) > MaxWindow {
			return false, fail(errAt("time", "a window of %s (%d to %d) is longer than any run (at most %s)", fmtDays(cp.Time.Sub(st.tl.Start)), st.tl.Start, cp.Time, fmtDays(MaxWindow)))
		}
		st.tl.End = cp.Time
		st.checkpoints++
		if st.stagedAny {
			for kind := range stateKinds {
				if idx, ok := st.byKind[kind]; ok {
					st.tv.Field(idx).Set(st.sv.Field(idx))
				}
			}
			st.staged, st.stagedAny = &timeline.Timeline{}, false
			st.sv = reflect.ValueOf(st.staged).Elem()
		}
	default:
		idx, ok := st.byKind[kind]
		if !ok {
			return false, st.unknownRecord(kind, info)
		}
		f := st.tv.Field(idx)
		if st.version >= 2 && stateKinds[kind] {
			f = st.sv.Field(idx) // committed by the next checkpoint
			st.stagedAny = true
		}
		e := reflect.New(f.Type().Elem()).Elem()
		if err := decodeStruct(m, e, "", skip, unknown); err != nil {
			return false, fail(err)
		}
		if err := checkRange(e, st.window); err != nil {
			return false, fail(err)
		}
		f.Set(reflect.Append(f, e))
		st.admit(kind, f)
	}
	return false, nil
}

// unknownRecord skips a record of a type this version does not know,
// counted for the warning.
func (st *readState) unknownRecord(kind string, info *Info) error {
	if info.UnknownRecords == nil {
		info.UnknownRecords = map[string]int{}
	}
	info.UnknownRecords[clip(kind)]++
	return nil
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
