package live

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const t0 = event.Mono(5_000_000_000) // the trace started 5 s after boot

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func at(sec float64) event.Mono { return t0 + event.Mono(sec*float64(time.Second)) }

func kframes(names ...string) []event.Frame {
	var out []event.Frame
	for i, n := range names {
		out = append(out, event.Frame{Addr: 0xffffffff81000000 + uint64(i)*0x100, Symbol: n, Offset: uint64(0x10 * (i + 1)), Module: "kernel"})
	}
	return out
}

// fixtures are one record of each shape the formats must handle.
func fixtures() map[Kind][]Record {
	loop0 := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	fio := event.Task{Pid: 9619, Tgid: 9618, Comm: "fio"}
	return map[Kind][]Record{
		KindSubmit: {
			SubmitFromSlow(event.SlowSubmit{Start: at(0.512345678), Latency: ms(18.9012), Task: fio, Dev: loop0, Op: "WS", End: "getrq"}, t0),
			SubmitFromSlow(event.SlowSubmit{Start: at(1.5), Latency: 1500 * time.Microsecond, Task: event.Task{Pid: 12, Tgid: 12, Comm: "kworker/u8:2"}, Dev: event.Device{Major: 259, Minor: 0}, Op: "W"}, t0),
			SubmitFromCall(event.SubmitCall{Start: at(12.000001), Latency: ms(250), Task: event.Task{Pid: 1, Tgid: 1, Comm: "evil\x1b[31mred"}, Dev: event.Device{Major: 8, Minor: 0, Name: "sda"}, Func: "submit_bio_noacct", Mechanism: event.MechKprobe}, t0),
		},
		KindExec: {
			ExecFrom(event.Exec{Time: at(0.25), Task: event.Task{Pid: 9631, Tgid: 9631, Comm: "arcconf"}, PPid: 9608, ParentComm: "raidmon", Filename: "/tmp/demo/arcconf",
				Args: []string{"/bin/sh", "/tmp/demo/arcconf", "getconfig", "1", "AL"}}, t0),
			ExecFrom(event.Exec{Time: at(3), Task: event.Task{Pid: 77, Tgid: 77, Comm: "true"}, PPid: 1, Filename: "/bin/true", Args: []string{"/bin/true", "a=>b"}, ArgsTruncated: true}, t0),
			ExecFrom(event.Exec{Time: at(4), Task: event.Task{Pid: 78, Tgid: 78, Comm: "noargs"}, PPid: 77, Filename: "/usr/bin/noargs"}, t0),
			ExecFrom(event.Exec{Time: at(5), Task: event.Task{Pid: 79, Tgid: 79, Comm: "sh"}, PPid: 78, Filename: "/bin/sh", Args: []string{"sh", "-c", "printf 'a\nb\t\xff'"}}, t0),
		},
		KindUevent: {
			UeventFrom(event.Uevent{Time: at(2.0000005), Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0", DevType: "disk", Seqnum: 4321}, t0),
			UeventFrom(event.Uevent{Time: at(2.1), Action: "bind", DevPath: "/devices/pci0000:00/0000:00:1f.2", Subsystem: "pci", Seqnum: 4322}, t0),
			UeventFrom(event.Uevent{Time: at(2.2), Action: "add", DevPath: "/devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1", Subsystem: "block", DevName: "sdb1", DevType: "partition", Seqnum: 4323}, t0),
		},
		KindFreeze: {
			FreezeFrom(facts.Span{Start: ms(1438.813), End: ms(1438.813 + 21.086), Kind: facts.KindFreezeWait, Pid: 9613, Tgid: 9613, Comm: "(udev-worker)",
				Device: "loop0", Attr: "queue/scheduler", Source: facts.SourceOffCPU,
				KernelStack: kframes("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store"),
				UserStack:   []event.Frame{{Addr: 0x7f0000001010, Symbol: "__write", Offset: 0x10, Module: "/usr/lib/x86_64-linux-gnu/libc.so.6"}, {Addr: 0x55550000, Module: "/usr/bin/udevadm"}}}),
			FreezeFrom(facts.Span{Start: ms(3000), End: ms(3002.5), Kind: facts.KindFreeze, Pid: 501, Tgid: 500, Comm: "tuned",
				Source: facts.SourceDirect(event.MechKprobe, "blk_freeze_queue_start"), KernelStack: []event.Frame{{Addr: 0xffffffffc0001234, Module: "kernel"}}}),
		},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/live -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./live -update rewrites it)\n got:\n%s\nwant:\n%s", name, got, want)
	}
}

func render(t *testing.T, k Kind, recs []Record, o Options) []byte {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(Header(k, o))
	for _, r := range recs {
		if r.Kind() != k {
			t.Fatalf("record %T has kind %s, want %s", r, r.Kind(), k)
		}
		line, err := Format(r, o)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(line, []byte("\n")) {
			t.Errorf("%s record does not end in a newline: %q", k, line)
		}
		b.Write(line)
	}
	return b.Bytes()
}

func TestGolden(t *testing.T) {
	fx := fixtures()
	tests := []struct {
		kind Kind
		opts Options
		file string
	}{
		{KindSubmit, Options{}, "submit.txt"},
		{KindSubmit, Options{Ms: true}, "submit-ms.txt"},
		{KindSubmit, Options{JSON: true}, "submit.jsonl"},
		{KindExec, Options{}, "exec.txt"},
		{KindExec, Options{JSON: true}, "exec.jsonl"},
		{KindUevent, Options{}, "uevent.txt"},
		{KindUevent, Options{JSON: true}, "uevent.jsonl"},
		{KindFreeze, Options{}, "freeze.txt"},
		{KindFreeze, Options{JSON: true}, "freeze.jsonl"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			golden(t, tt.file, render(t, tt.kind, fx[tt.kind], tt.opts))
		})
	}
}

// Columns line up under the header: each header label starts where its
// value starts in a row (for the fixed-width columns).
func TestTextColumnsAlign(t *testing.T) {
	fx := fixtures()
	for _, k := range []Kind{KindSubmit, KindExec, KindUevent, KindFreeze} {
		h := Header(k, Options{})
		line, _ := Format(fx[k][0], Options{})
		row := strings.SplitN(string(line), "\n", 2)[0]
		for _, label := range []string{"COMM", "PID", "PPID", "DEVICE", "ACTION", "DEVPATH"} {
			i := strings.Index(h, label+" ")
			if i < 0 {
				continue
			}
			if i == 0 || h[i-1] != ' ' || row[i-1] != ' ' || row[i] == ' ' {
				t.Errorf("%s: column %s starts at %d in the header, but the row has %q there:\n%s%s", k, label, i, row[max(i-1, 0):], h, row)
			}
		}
	}
}

func TestHeaders(t *testing.T) {
	tests := []struct {
		kind Kind
		opts Options
		want []string
	}{
		{KindSubmit, Options{}, []string{"TIME(s)", "COMM", "PID", "LAT(us)", "DISK"}},
		{KindSubmit, Options{Ms: true}, []string{"TIME(s)", "COMM", "PID", "LAT(ms)", "DISK"}},
		{KindExec, Options{}, []string{"TIME(s)", "COMM", "PID", "PPID", "RET", "ARGS"}},
		{KindUevent, Options{}, []string{"TIME(s)", "ACTION", "DEVPATH", "(SUBSYSTEM)", "DEVNAME", "SEQNUM"}},
		{KindFreeze, Options{}, []string{"TIME(s)", "COMM", "PID", "DEVICE", "DUR(ms)", "ATTR"}},
		{KindExec, Options{JSON: true}, nil},
	}
	for _, tt := range tests {
		got := strings.Fields(Header(tt.kind, tt.opts))
		if !reflect.DeepEqual(got, tt.want) && !(len(got) == 0 && tt.want == nil) {
			t.Errorf("Header(%s, %+v) = %q, want %q", tt.kind, tt.opts, got, tt.want)
		}
	}
}

// JSON records: one object per line, every field always present, names
// lowercase, values round-tripping.
func TestJSONFields(t *testing.T) {
	want := map[Kind][]string{
		KindSubmit: {"comm", "dev", "disk", "event", "latency_ns", "mechanism", "op", "pid", "tid", "time_s"},
		KindExec:   {"args", "args_truncated", "comm", "event", "filename", "parent_comm", "pid", "ppid", "ret", "tid", "time_s", "uid"},
		KindUevent: {"action", "devname", "devpath", "devtype", "event", "seqnum", "subsystem", "time_s"},
		KindFreeze: {"attr", "comm", "device", "duration_ns", "event", "kernel_stack", "kind", "pid", "source", "tid", "time_s", "user_stack"},
	}
	lower := regexp.MustCompile(`^[a-z_]+$`)
	for k, recs := range fixtures() {
		for _, r := range recs {
			line, err := Format(r, Options{JSON: true})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Count(line, []byte("\n")) != 1 {
				t.Errorf("%s: not one line: %q", k, line)
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("%s: %v: %s", k, err, line)
			}
			var keys []string
			for key := range m {
				keys = append(keys, key)
				if !lower.MatchString(key) {
					t.Errorf("%s: field %q is not lowercase", k, key)
				}
			}
			sort.Strings(keys)
			if !reflect.DeepEqual(keys, want[k]) {
				t.Errorf("%s fields %v, want %v", k, keys, want[k])
			}
			if m["event"] != string(k) {
				t.Errorf("%s: event %v", k, m["event"])
			}
			back := reflect.New(reflect.TypeOf(r))
			if err := json.Unmarshal(line, back.Interface()); err != nil {
				t.Fatal(err)
			}
			if got := back.Elem().Interface(); !reflect.DeepEqual(got, r) && k != KindExec {
				t.Errorf("%s round trip: %+v, want %+v", k, got, r)
			}
		}
	}
}

func TestRecordValues(t *testing.T) {
	fx := fixtures()
	s := fx[KindSubmit][0].(Submit)
	if s.Pid != 9618 || s.Tid != 9619 || s.LatencyNs != int64(ms(18.9012)) || s.Disk != "loop0" || s.Dev != "7:0" || s.Mechanism != "tp_btf" {
		t.Errorf("submit %+v", s)
	}
	if d := s.TimeS - 0.512345678; d > 1e-9 || d < -1e-9 {
		t.Errorf("time_s %v", s.TimeS)
	}
	if s := fx[KindSubmit][1].(Submit); s.Disk != "259:0" {
		t.Errorf("a device without a name is shown as major:minor, got %q", s.Disk)
	}
	if c := fx[KindSubmit][2].(Submit); c.Mechanism != "kprobe" || c.Op != "" {
		t.Errorf("submit call %+v", c)
	}
	e := fx[KindExec][2].(Exec)
	if e.Args == nil || len(e.Args) != 0 || e.Ret != 0 {
		t.Errorf("exec without args: %+v (args must be [] in JSON, not null)", e)
	}
	f := fx[KindFreeze][0].(Freeze)
	if f.DurationNs != int64(ms(21.086)) || f.Tid != 9613 || len(f.KernelStack) != 5 || f.UserStack[0] != "__write+0x10 [libc.so.6]" || f.UserStack[1] != "/usr/bin/udevadm+0x55550000" {
		t.Errorf("freeze %+v", f)
	}
	if g := fx[KindFreeze][1].(Freeze); g.Pid != 500 || g.Tid != 501 || g.UserStack == nil {
		t.Errorf("freeze without user stack: %+v (stacks must be [] in JSON, not null)", g)
	}
}
