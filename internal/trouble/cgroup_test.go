package trouble

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// --cgroup takes a cgroup v2 directory or a path in the hierarchy, and
// says what is wrong with anything else.
func TestCgroupDir(t *testing.T) {
	proc, mnt, v1 := t.TempDir(), t.TempDir(), t.TempDir()
	for _, d := range []string{filepath.Join(proc, "self"), filepath.Join(mnt, "db.slice", "x"), filepath.Join(v1, "blk")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{mnt, filepath.Join(mnt, "db.slice"), filepath.Join(mnt, "db.slice", "x")} {
		if err := os.WriteFile(filepath.Join(d, "io.pressure"), []byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mounts := fmt.Sprintf("proc /proc proc rw 0 0\ncgroup %s cgroup rw,blkio 0 0\ncgroup2 %s cgroup2 rw 0 0\n", v1, mnt)
	if err := os.WriteFile(filepath.Join(proc, "self", "mounts"), []byte(mounts), 0o644); err != nil {
		t.Fatal(err)
	}
	// A mount point with a space: /proc/self/mounts writes it \040.
	spaced := filepath.Join(t.TempDir(), "cgroup v2")
	if err := os.MkdirAll(filepath.Join(spaced, "web"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spaced, "web", "io.pressure"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	spacedProc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(spacedProc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spacedProc, "self", "mounts"), []byte("cgroup2 "+strings.ReplaceAll(spaced, " ", `\040`)+" cgroup2 rw 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	noMounts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(noMounts, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(noMounts, "self", "mounts"), []byte("proc /proc proc rw 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, proc, arg, want, err string
	}{
		{"directory", proc, filepath.Join(mnt, "db.slice"), filepath.Join(mnt, "db.slice"), ""},
		{"path in the hierarchy", proc, "/db.slice/x", filepath.Join(mnt, "db.slice", "x"), ""},
		{"path without a slash", proc, "db.slice", filepath.Join(mnt, "db.slice"), ""},
		{"the root", proc, "/", mnt, ""},
		{"dot-dots stay in the mount", proc, "/../../db.slice", filepath.Join(mnt, "db.slice"), ""},
		{"mount point with a space", spacedProc, "/web", filepath.Join(spaced, "web"), ""},
		{"v1 directory", proc, filepath.Join(v1, "blk"), "", "has no io.pressure: not a cgroup v2 directory"},
		{"missing", proc, "/nope", "", "no such cgroup in the cgroup v2 hierarchy (mounted at " + mnt + ")"},
		{"no cgroup2 mount", noMounts, "/db.slice", "", "no cgroup v2 hierarchy is mounted"},
		{"no mounts file", t.TempDir(), "/db.slice", "", "the cgroup v2 mounts could not be read"},
		{"empty", proc, "", "", "want a cgroup v2 directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CgroupDir(tt.proc, tt.arg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "--cgroup") {
					t.Fatalf("got %q, %v; want an error naming --cgroup and saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// writeTotal writes a pressure file whose "some" total is us.
func writeTotal(t *testing.T, p string, us int) {
	t.Helper()
	s := fmt.Sprintf("some avg10=0.00 avg60=0.00 avg300=0.00 total=%d\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", us)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A PSI event is a signal when its file's stall grew by the trigger's
// stall; a host-wide event of a run scoped to a cgroup never is, and is
// counted out of scope unless the cgroup's own stall grew by its
// trigger's over the same stretch.
func TestConfirmScoped(t *testing.T) {
	dir := t.TempDir()
	host, cg := filepath.Join(dir, "io"), filepath.Join(dir, "io.pressure")
	w := New(Config{BusyEvery: -1, Cgroup: dir})
	in := &psiWatch{src: PSIIO, path: cg, stall: 5 * time.Millisecond}
	out := &psiWatch{src: PSIIO, path: host, stall: 100 * time.Millisecond, outside: true, scoped: cg, scopedStall: 5 * time.Millisecond, scopedLast: 6000 * time.Microsecond} // the cgroup at 6 ms at the last host event
	steps := []struct {
		name       string
		w          *psiWatch
		host, cg   int // totals, µs
		signal     bool
		outOfScope uint64
		droppedIn  uint64
		droppedOut uint64
	}{
		{"the cgroup stalled 6 ms", in, 0, 6000, true, 0, 0, 0},
		{"the cgroup stalled 1 ms more: not over its trigger", in, 0, 7000, false, 0, 1, 0},
		{"the host stalled 150 ms, the cgroup 1 ms since the last host event", out, 150000, 7000, false, 1, 1, 0},
		{"the host 150 ms more, the cgroup 10 ms: its own", out, 300000, 17000, false, 1, 1, 0},
		{"the host 50 ms more: under its trigger", out, 350000, 17000, false, 1, 1, 1},
		{"the host 100 ms more, the cgroup none", out, 400000, 17000, false, 2, 1, 1},
	}
	for _, s := range steps {
		writeTotal(t, host, s.host)
		writeTotal(t, cg, s.cg)
		if got := w.confirm(s.w); got != s.signal {
			t.Errorf("%s: signal %v, want %v", s.name, got, s.signal)
		}
		if w.outOfScope[PSIIO] != s.outOfScope || in.dropped != s.droppedIn || out.dropped != s.droppedOut {
			t.Errorf("%s: out of scope %d, dropped %d and %d; want %d, %d and %d", s.name, w.outOfScope[PSIIO], in.dropped, out.dropped, s.outOfScope, s.droppedIn, s.droppedOut)
		}
	}
}

// As root, the kernel takes the triggers on a real cgroup v2's pressure
// files (and the host-wide ones beside them), and the cgroup's totals are
// read. That a stall of its tasks arms, and others' do not, is checked by
// cmd/whyslow's TestArmedAutoCgroupScope.
func TestCgroupPSITriggersAccepted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PSI triggers need root with a 1 s window")
	}
	root, err := CgroupDir("/proc", "/")
	if err != nil {
		t.Skipf("no cgroup v2 with PSI here: %v", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("whyslow-trouble-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	w := New(Config{BusyEvery: -1, Cgroup: dir})
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var hosts int
	for _, pw := range w.psi {
		if pw.outside {
			hosts++
		}
	}
	now, _ := event.Now()
	sum := w.Stop(now)
	for _, st := range sum.Sources {
		if (st.Source == PSIIO || st.Source == PSIMemory) && !st.On {
			t.Errorf("%s off: %s", st.Source, st.Reason)
		}
	}
	if hosts != 2 {
		t.Errorf("%d host-wide triggers counting the stalls out of scope, want 2 (io, memory)", hosts)
	}
	if sum.Cgroup != dir || !sum.CgroupPSI.Known || !sum.PSI.Known || sum.Stall != CgroupStall {
		t.Errorf("summary cgroup %q (PSI %+v), host PSI known %v, stall %v: want %s, both known, %v", sum.Cgroup, sum.CgroupPSI, sum.PSI.Known, sum.Stall, dir, CgroupStall)
	}
}
