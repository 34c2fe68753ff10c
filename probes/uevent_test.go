package probes

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/timeline"
)

// schedProcSink records what the offcpu, exec and uevent probes deliver.
type schedProcSink struct {
	mu     sync.Mutex
	events []event.Event
	losses []event.Loss
}

func (s *schedProcSink) Event(e event.Event) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
}

func (s *schedProcSink) Loss(l event.Loss) {
	s.mu.Lock()
	s.losses = append(s.losses, l)
	s.mu.Unlock()
}

func (s *schedProcSink) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

// find returns the first event that matches, or false.
func (s *schedProcSink) find(match func(event.Event) bool) (event.Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if match(e) {
			return e, true
		}
	}
	return nil, false
}

// waitFor polls until an event matches or the deadline passes.
func (s *schedProcSink) waitFor(d time.Duration, match func(event.Event) bool) (event.Event, bool) {
	deadline := time.Now().Add(d)
	for {
		if e, ok := s.find(match); ok || time.Now().After(deadline) {
			return e, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func schedRequireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		scenario.Skip(t, "needs root and a live kernel (-short)")
	}
	if os.Geteuid() != 0 {
		scenario.Skip(t, "needs root")
	}
}

func TestParseUevent(t *testing.T) {
	nul := func(parts ...string) []byte { return []byte(strings.Join(parts, "\x00") + "\x00") }
	tests := []struct {
		name    string
		msg     []byte
		want    event.Uevent
		wantErr string
	}{
		{
			name: "block change",
			msg: nul("change@/devices/virtual/block/loop0", "ACTION=change", "DEVPATH=/devices/virtual/block/loop0",
				"SUBSYSTEM=block", "MAJOR=7", "MINOR=0", "DEVNAME=loop0", "DEVTYPE=disk", "DISKSEQ=9", "SEQNUM=4711"),
			want: event.Uevent{Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block",
				DevName: "loop0", DevType: "disk", Seqnum: 4711},
		},
		{
			name: "no devname, value with equals sign",
			msg:  nul("add@/module/loop", "ACTION=add", "DEVPATH=/module/loop", "SUBSYSTEM=module", "X=a=b", "SEQNUM=1"),
			want: event.Uevent{Action: "add", DevPath: "/module/loop", Subsystem: "module", Seqnum: 1},
		},
		{
			name: "header only fills action and devpath",
			msg:  nul("remove@/devices/x", "SUBSYSTEM=block", "SEQNUM=2"),
			want: event.Uevent{Action: "remove", DevPath: "/devices/x", Subsystem: "block", Seqnum: 2},
		},
		{
			name: "no trailing NUL",
			msg:  []byte("bind@/devices/y\x00SUBSYSTEM=pci\x00SEQNUM=3"),
			want: event.Uevent{Action: "bind", DevPath: "/devices/y", Subsystem: "pci", Seqnum: 3},
		},
		{name: "libudev", msg: append([]byte("libudev\x00\xfe\xed\xca\xfe"), make([]byte, 32)...), wantErr: "libudev"},
		{name: "empty", msg: nil, wantErr: "want action@devpath"},
		{name: "header without at", msg: nul("change", "SUBSYSTEM=block", "SEQNUM=1"), wantErr: "want action@devpath"},
		{name: "empty action", msg: nul("@/devices/x", "SUBSYSTEM=block", "SEQNUM=1"), wantErr: "want action@devpath"},
		{name: "empty devpath", msg: nul("add@", "SUBSYSTEM=block", "SEQNUM=1"), wantErr: "want action@devpath"},
		{name: "field without equals", msg: nul("add@/x", "SUBSYSTEM", "SEQNUM=1"), wantErr: "want KEY=VALUE"},
		{name: "no subsystem", msg: nul("add@/x", "SEQNUM=1"), wantErr: "without SUBSYSTEM"},
		{name: "no seqnum", msg: nul("add@/x", "SUBSYSTEM=block"), wantErr: "without SEQNUM"},
		{name: "bad seqnum", msg: nul("add@/x", "SUBSYSTEM=block", "SEQNUM=12a"), wantErr: `SEQNUM "12a"`},
		{name: "binary garbage", msg: []byte{0xff, 0x00, 0x40, 0x00, 0x3d}, wantErr: "want action@devpath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseUevent(tt.msg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestUeventLive triggers a change uevent on loop0 and expects to see it.
func TestUeventLive(t *testing.T) {
	schedRequireRoot(t)
	const path = "/sys/block/loop0/uevent"
	if _, err := os.Stat(path); err != nil {
		scenario.Skip(t, "no loop0: %v", err)
	}
	sink := &schedProcSink{}
	r, st := ueventProbe{}.Start(Config{ProcFS: "/proc", SysFS: "/sys"}, sink)
	if r == nil {
		t.Fatalf("start: %+v", st)
	}
	if st.Mechanism != event.MechNetlink || st.Status != event.StatusOK {
		t.Errorf("status %+v", st)
	}
	before := mustNow(t)
	if err := os.WriteFile(path, []byte("change"), 0); err != nil {
		r.Stop()
		t.Fatal(err)
	}
	e, ok := sink.waitFor(5*time.Second, func(e event.Event) bool {
		u, ok := e.(event.Uevent)
		return ok && u.Action == "change" && u.Subsystem == "block" && u.DevName == "loop0"
	})
	stopped := make(chan error)
	go func() { stopped <- r.Stop() }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return: the reader is still blocked")
	}
	if !ok {
		t.Fatalf("no change uevent for loop0; got %+v", sink.events)
	}
	u := e.(event.Uevent)
	if u.DevPath != "/devices/virtual/block/loop0" || u.DevType != "disk" || u.Seqnum == 0 {
		t.Errorf("uevent %+v", u)
	}
	if u.Time < before || u.Time > mustNow(t) {
		t.Errorf("time %d not between %d and now", u.Time, before)
	}
	if len(sink.losses) != 0 {
		t.Errorf("losses %+v", sink.losses)
	}
}

func mustNow(t *testing.T) event.Mono {
	t.Helper()
	now, err := event.Now()
	if err != nil {
		t.Fatal(err)
	}
	return now
}
