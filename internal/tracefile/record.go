package tracefile

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

// typeCheckpoint is the record that closes a flush of a streamed trace
// (version 2): the state records (probe, loss, device) written since the
// previous checkpoint, if any, are the state of the run at its time, and
// the trace holds the run up to that time.
const typeCheckpoint = "checkpoint"

// stateKinds are the record types a checkpoint commits: each checkpoint
// that has them replaces them all. Besides the probes, losses and device
// histograms, the streams of sums (timeline.Sums: the syscall probe's
// syscall_stats and blocked_stack).
var stateKinds = func() map[string]bool {
	m := map[string]bool{"probe": true, "loss": true, "device": true}
	for _, s := range timeline.Streams() {
		if s.State() {
			m[s.Record()] = true
		}
	}
	return m
}()

// Recorder writes a trace as a run goes (format version 2, gzip-compressed):
// Begin writes what is known at the start (the run, the window's start,
// the block device stacking); Append writes the events the timeline holds
// that it has not written yet, in the order each stream got them;
// AppendPart writes every event of a piece of the run (a flight
// recorder's second); Checkpoint writes the state of the run so far (probes, losses,
// histograms) if given, then a checkpoint record, and flushes the
// compressor and, when given, the file (Sync). Finish writes the rest, the
// final state and the end record. A trace cut anywhere (the run killed,
// the machine off) reads up to its last complete record, with the state
// of its last checkpoint (Read says it is incomplete).
//
// The recorder keeps no event: Append reads them from the timeline (a
// shallow copy made under the collector's lock does: the events of a
// stream do not change once added).
type Recorder struct {
	zw   *gzip.Writer
	bw   *bufio.Writer
	info Info
	// Sync, when set, makes what Checkpoint flushed durable (fdatasync).
	Sync func() error

	n    int   // records written, for the end record
	done []int // events written, by stream (index in streams())
	buf  []byte
	err  error // the first error: the recorder writes nothing more
}

// NewRecorder starts a trace on w.
func NewRecorder(w io.Writer, info Info) *Recorder {
	zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression) // a valid level: no error
	return &Recorder{zw: zw, bw: bufio.NewWriterSize(zw, 64<<10), info: info, done: make([]int, len(streams()))}
}

// Err is the first error the recorder met; it writes nothing after one.
func (r *Recorder) Err() error { return r.err }

func (r *Recorder) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	return r.err
}

// line writes one JSON value as a line.
func (r *Recorder) line(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return r.fail(err)
	}
	r.bw.Write(b)
	if err := r.bw.WriteByte('\n'); err != nil {
		return r.fail(err)
	}
	return nil
}

// record writes one record of type kind holding v.
func (r *Recorder) record(kind string, v reflect.Value) error {
	if r.err != nil {
		return r.err
	}
	r.n++
	var err error
	if r.buf, err = appendRecord(r.buf[:0], kind, v); err == nil {
		r.bw.Write(r.buf)
		if err := r.bw.WriteByte('\n'); err != nil {
			return r.fail(err)
		}
		return nil
	}
	// The reflective codec: values the fast one does not write, or the
	// reason a value cannot be recorded.
	m, err := encodeStruct(v)
	if err != nil {
		return r.fail(fmt.Errorf("recording %s: %w", kind, err))
	}
	m["type"] = kind
	return r.line(m)
}

// Begin writes the header, the run, the timeline's scalars (its window
// ends at its start: the checkpoints move the end) and the holders.
func (r *Recorder) Begin(tl *timeline.Timeline) error {
	if tl == nil {
		return r.fail(errors.New("no timeline to record"))
	}
	if err := r.line(header{Format: Format, Version: Version, Encoding: "json-lines", Writer: "whyslow " + r.info.Version}); err != nil {
		return err
	}
	run := runRecord{Version: r.info.Version, Duration: int64(r.info.Duration), DeviceFilter: r.info.Devices}
	if !r.info.StartedAt.IsZero() {
		run.StartedAt = r.info.StartedAt.Format(time.RFC3339Nano)
	}
	if err := r.record(typeRun, reflect.ValueOf(run)); err != nil {
		return err
	}
	tv := reflect.ValueOf(tl).Elem()
	scalars := reflect.New(timelineType).Elem()
	// The timeline record has its scalars; the slices are streams and
	// states, the pointers (Trouble, Coverage) records of their own at
	// the end.
	for i := 0; i < timelineType.NumField(); i++ {
		if k := timelineType.Field(i).Type.Kind(); k != reflect.Slice && k != reflect.Pointer && timelineType.Field(i).IsExported() {
			scalars.Field(i).Set(tv.Field(i))
		}
	}
	w := scalars.Addr().Interface().(*timeline.Timeline)
	w.End = w.Start
	if err := r.record(typeTimeline, scalars); err != nil {
		return err
	}
	for _, h := range tl.Holders {
		if err := r.record("holder", reflect.ValueOf(h)); err != nil {
			return err
		}
	}
	return nil
}

// Append writes the events of tl's streams that it has not written yet,
// merged in time order (each stream in its own order, so that reading them
// back rebuilds each stream exactly, as it was when sorted or not).
func (r *Recorder) Append(tl *timeline.Timeline) error {
	if r.err != nil {
		return r.err
	}
	type cursor struct {
		i        int // in streams()
		kind     string
		s        reflect.Value
		pos, end int
		when     event.Mono // of event pos
	}
	// The time of the cursor's event, read through its address: no copy,
	// no allocation.
	next := func(c *cursor) { c.when = c.s.Index(c.pos).Addr().Interface().(event.Event).When() }
	tv := reflect.ValueOf(tl).Elem()
	var cur []*cursor
	for i, s := range streams() {
		f := tv.Field(s.field)
		if !f.Type().Elem().Implements(eventType) || f.Len() <= r.done[i] || stateKinds[s.kind] {
			continue // sums go with the state, at checkpoints
		}
		c := &cursor{i: i, kind: s.kind, s: f, pos: r.done[i], end: f.Len()}
		next(c)
		cur = append(cur, c)
	}
	for len(cur) > 0 {
		best := 0
		for j := 1; j < len(cur); j++ {
			if cur[j].when < cur[best].when {
				best = j
			}
		}
		c := cur[best]
		if err := r.record(c.kind, c.s.Index(c.pos)); err != nil {
			return err
		}
		r.done[c.i]++
		if c.pos++; c.pos == c.end {
			cur = slices.Delete(cur, best, best+1)
		} else {
			next(c)
		}
	}
	return nil
}

// AppendPart writes every event of part, one piece of a run whose earlier
// pieces were written before (as a flight recorder holds a run: in pieces
// of a second each), merged in time order as Append merges them. Append
// and AppendPart are not to be mixed on one timeline: Append writes what
// a timeline holds that it has not written yet, AppendPart all of part.
func (r *Recorder) AppendPart(part *timeline.Timeline) error {
	clear(r.done)
	return r.Append(part)
}

// Checkpoint writes the state of the run (the probes, losses and device
// histograms of state; nil writes none and keeps the previous one) and a
// checkpoint record at time at, then flushes: the trace holds the run up
// to at.
func (r *Recorder) Checkpoint(state *timeline.Timeline, at event.Mono) error {
	if r.err != nil {
		return r.err
	}
	if state != nil {
		sv := reflect.ValueOf(state).Elem()
		for _, s := range streams() {
			if !stateKinds[s.kind] {
				continue
			}
			f := sv.Field(s.field)
			for i := 0; i < f.Len(); i++ {
				if err := r.record(s.kind, f.Index(i)); err != nil {
					return err
				}
			}
		}
	}
	r.n++
	if err := r.line(struct {
		Type string     `json:"type"`
		Time event.Mono `json:"time"`
	}{typeCheckpoint, at}); err != nil {
		return err
	}
	return r.flush()
}

// flush pushes what is buffered through the compressor to the file, and
// makes it durable when Sync is set.
func (r *Recorder) flush() error {
	if err := r.bw.Flush(); err != nil {
		return r.fail(err)
	}
	if err := r.zw.Flush(); err != nil {
		return r.fail(err)
	}
	if r.Sync != nil {
		if err := r.Sync(); err != nil {
			return r.fail(err)
		}
	}
	return nil
}

// Finish writes the events not written yet, the final state of the run and
// its end (tl.End), and the end record, and closes the compressed stream
// (not w).
func (r *Recorder) Finish(tl *timeline.Timeline) error {
	if err := r.Append(tl); err != nil {
		return err
	}
	if tl.Trouble != nil {
		r.n++
		if err := r.line(struct {
			Type    string           `json:"type"`
			Summary *trouble.Summary `json:"summary"`
		}{typeTrouble, tl.Trouble}); err != nil {
			return err
		}
	}
	if tl.Coverage != nil {
		r.n++
		if err := r.line(struct {
			Type     string            `json:"type"`
			Coverage *trouble.Coverage `json:"coverage"`
		}{typeCoverage, tl.Coverage}); err != nil {
			return err
		}
	}
	if err := r.Checkpoint(tl, tl.End); err != nil {
		return err
	}
	if err := r.line(map[string]any{"type": typeEnd, "records": r.n}); err != nil {
		return err
	}
	if err := r.bw.Flush(); err != nil {
		return r.fail(err)
	}
	if err := r.zw.Close(); err != nil {
		return r.fail(err)
	}
	if r.Sync != nil {
		if err := r.Sync(); err != nil {
			return r.fail(err)
		}
	}
	return nil
}

// Write records a whole timeline and the run's info as a trace: what a
// Recorder writes over a run, at once (events merged in time order, one
// checkpoint at the end).
func Write(w io.Writer, tl *timeline.Timeline, info Info) error {
	if tl == nil {
		return errors.New("no timeline to record")
	}
	r := NewRecorder(w, info)
	if err := r.Begin(tl); err != nil {
		return err
	}
	return r.Finish(tl)
}
