package live

import (
	"bytes"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// The tracer turns probe events into lines, after the header only, and
// applies -p and -d.
func TestTracerEmitsAndFilters(t *testing.T) {
	var out scenario.Buffer
	tr, err := newTracer(TraceOptions{Out: &out, ErrOut: io.Discard, Kind: KindSubmit, Pid: 20, Device: "loop1", Min: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := tr.start
	sub := func(pid, tid uint32, dev string, lat time.Duration) event.SlowSubmit {
		return event.SlowSubmit{Start: start.Add(time.Second), Latency: lat, Task: event.Task{Pid: tid, Tgid: pid, Comm: "fio"}, Dev: event.Device{Major: 7, Minor: 1, Name: dev}}
	}
	tr.Event(sub(20, 21, "loop1", 2*time.Millisecond)) // before the header: held
	if out.String() != "" {
		t.Fatalf("written before the header: %q", out.String())
	}
	tr.openOutput()
	tr.Event(sub(20, 22, "loop2", 3*time.Millisecond)) // other device
	tr.Event(sub(30, 31, "loop1", 4*time.Millisecond)) // other process
	tr.Event(sub(99, 20, "loop1", 5*time.Millisecond)) // -p matches the thread id
	tr.Event(event.Exec{})                             // not this trace's event
	tr.Loss(event.Loss{Probe: "submit", What: "ring buffer full", Count: 3})
	tr.Loss(event.Loss{Probe: "submit", What: "ring buffer full", Count: 4})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME(s)") || !strings.Contains(lines[1], "2000  loop1") || !strings.Contains(lines[2], "5000  loop1") {
		t.Fatalf("output:\n%s", out.String())
	}
	var errb bytes.Buffer
	tr.opts.ErrOut = &errb
	tr.printLosses()
	if errb.String() != "whyslow: lost 7 events (submit: ring buffer full 7)\n" {
		t.Errorf("losses line %q", errb.String())
	}
}

// errWriter fails every write with err.
type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

// A reader that went away (EPIPE) ends the trace quietly; other write
// errors are errors.
func TestTracerOutputErrors(t *testing.T) {
	for _, tt := range []struct {
		err     error
		wantErr bool
	}{
		{&os.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.EPIPE}, false},
		{&os.PathError{Op: "write", Path: "out.txt", Err: syscall.ENOSPC}, true},
	} {
		tr, err := newTracer(TraceOptions{Out: errWriter{tt.err}, ErrOut: io.Discard, Kind: KindExec, Format: Options{JSON: true}})
		if err != nil {
			t.Fatal(err)
		}
		tr.openOutput() // JSON: no header, nothing written yet
		select {
		case <-tr.failed:
			t.Fatal("failed before any write")
		default:
		}
		tr.Event(event.Exec{Task: event.Task{Pid: 1, Tgid: 1, Comm: "x"}})
		select {
		case <-tr.failed:
		default:
			t.Fatal("a failed write must end the trace")
		}
		tr.Event(event.Exec{}) // ignored after the failure
		if err := tr.outputErr(); (err != nil) != tt.wantErr {
			t.Errorf("%v: outputErr %v, want error %v", tt.err, err, tt.wantErr)
		}
	}
}

// The write end of a pipe tells when its reader is gone, so a trace with
// nothing more to write ends when `head` exits.
func TestReaderGone(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	done := make(chan struct{})
	defer close(done)
	gone := readerGone(w, done)
	if gone == nil {
		t.Fatal("a pipe must be watched")
	}
	select {
	case <-gone:
		t.Fatal("reader still open")
	case <-time.After(300 * time.Millisecond):
	}
	r.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("closing the reader was not noticed")
	}
	f, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if readerGone(&bytes.Buffer{}, done) != nil || readerGone(f, done) != nil {
		t.Error("only pipes are watched")
	}
}
