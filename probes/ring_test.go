package probes

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// scriptedRing returns its records, then its errors, in turn.
type scriptedRing struct {
	records [][]byte
	errs    []error
}

func (r *scriptedRing) ReadInto(rec *ringbuf.Record) error {
	if len(r.records) > 0 {
		rec.RawSample, r.records = r.records[0], r.records[1:]
		return nil
	}
	err := r.errs[0]
	r.errs = r.errs[1:]
	return err
}

func (r *scriptedRing) SetDeadline(time.Time) {}
func (r *scriptedRing) BufferSize() int       { return 4096 }
func (r *scriptedRing) AvailableBytes() int   { return 0 }

// A real ring read in batches while a program writes to it, sometimes
// faster than a batch, sometimes idle: every record is read, and a flush
// returns once what is left is read.
func TestReadRingBatchesARealRing(t *testing.T) {
	schedRequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SocketFilter,
		License: "GPL",
		Instructions: asm.Instructions{
			// bpf_ringbuf_output(ring, fp-8, 8, 0): an 8-byte record.
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.Mov.Imm(asm.R0, 0),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.Mov.Imm(asm.R3, 8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnRingbufOutput.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	f, wait := ringFile(m)
	if wait == nil {
		t.Fatal("the ring's file cannot be waited on in the netpoller")
	}
	defer f.Close()
	const n = 300
	var got int
	done := make(chan struct{})
	sink := &schedProcSink{}
	go func() {
		defer close(done)
		readRingEvery(rd, wait, sink, "test", 20*time.Millisecond, func([]byte) { got++ })
	}()
	in := make([]byte, 14)
	for i := 0; i < n; i++ {
		if _, _, err := prog.Test(in); err != nil {
			t.Fatal(err)
		}
		switch {
		case i%100 == 99:
			time.Sleep(100 * time.Millisecond) // idle: the reader waits again
		case i%3 == 0:
			time.Sleep(time.Millisecond)
		}
	}
	if err := rd.Flush(); err != nil {
		t.Fatal(err)
	}
	f.SetReadDeadline(ringPoll)
	<-done
	if got != n || len(sink.losses) > 0 {
		t.Errorf("%d records read of %d, losses %+v", got, n, sink.losses)
	}
}

// A ring that cannot be read any more ends the reading with a loss that
// says why; transient errors and a flush do not.
func TestReadRingCountsAReadError(t *testing.T) {
	tests := []struct {
		name     string
		errs     []error
		wantLoss string
	}{
		{"flushed", []error{unix.EINTR, unix.EAGAIN, ringbuf.ErrFlushed}, ""},
		{"closed", []error{ringbuf.ErrClosed}, ""},
		{"bad fd", []error{unix.EINTR, unix.EBADF}, "ring buffer unreadable (EBADF): later events dropped in the ring"},
		{"other", []error{os.ErrInvalid}, "ring buffer unreadable (invalid argument)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &schedProcSink{}
			rd := &scriptedRing{records: [][]byte{{1}, {2}}, errs: tt.errs}
			var got int
			readRing(rd, nil, sink, "submit", func([]byte) { got++ })
			if got != 2 {
				t.Errorf("%d records read, want 2", got)
			}
			switch {
			case tt.wantLoss == "" && len(sink.losses) > 0:
				t.Errorf("losses %+v", sink.losses)
			case tt.wantLoss != "" && (len(sink.losses) != 1 || !strings.HasPrefix(sink.losses[0].What, tt.wantLoss) || sink.losses[0].Probe != "submit" || sink.losses[0].Count != 1):
				t.Errorf("losses %+v, want one of submit %q", sink.losses, tt.wantLoss)
			}
		})
	}
}

// A netlink receive error (other than an overrun) is counted, the socket
// reopened, and uevents keep coming on the new one.
func TestUeventReopensAfterAReceiveError(t *testing.T) {
	schedRequireRoot(t)
	dev := scenario.LoopDevice(t, 8<<20)
	sink := &schedProcSink{}
	failed := false
	r := &ueventRunning{procfs: "/proc", sink: sink, recv: func(fd int, p []byte, flags int) (int, unix.Sockaddr, error) {
		if !failed {
			failed = true
			return 0, nil, unix.EBADF
		}
		return unix.Recvfrom(fd, p, flags)
	}}
	f, err := r.open()
	if err != nil {
		t.Fatal(err)
	}
	r.f = f
	r.wg.Add(1)
	go r.read()
	deadline := time.Now().Add(10 * time.Second)
	var seen bool
	for !seen && time.Now().Before(deadline) {
		// The reopened socket may miss the first change: write until one comes.
		if err := os.WriteFile("/sys/block/"+dev+"/uevent", []byte("change"), 0); err != nil {
			r.Stop()
			t.Fatal(err)
		}
		_, seen = sink.waitFor(500*time.Millisecond, func(e event.Event) bool {
			u, ok := e.(event.Uevent)
			return ok && u.DevName == dev && u.Action == "change"
		})
	}
	if err := r.Stop(); err != nil {
		t.Error(err)
	}
	if !seen {
		t.Fatalf("no uevent after the socket was reopened")
	}
	if len(sink.losses) != 1 || sink.losses[0].What != "netlink receive error (EBADF), socket reopened" || sink.losses[0].Count < 1 {
		t.Errorf("losses %+v, want the receive error counted", sink.losses)
	}
}
