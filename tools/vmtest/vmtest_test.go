package vmtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readCpio parses a newc archive: name -> (mode, data).
func readCpio(t *testing.T, b []byte) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	for off := 0; ; {
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off = (off + 110 + namesize + 3) &^ 3
		data := b[off : off+size]
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = entry{mode: uint32(mode), data: data}
	}
}

func TestArchive(t *testing.T) {
	a := NewArchive()
	a.File("/init", []byte("#!/bin/sh\n"), 0o755)
	a.File("usr/lib/x.so", []byte("12345"), 0o644)
	a.Symlink("/bin/sh", "busybox")
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got := readCpio(t, buf.Bytes())
	for _, tt := range []struct {
		name string
		mode uint32
		data string
	}{
		{"init", modeFile | 0o755, "#!/bin/sh\n"},
		{"usr", modeDir | 0o755, ""},
		{"usr/lib", modeDir | 0o755, ""},
		{"usr/lib/x.so", modeFile | 0o644, "12345"},
		{"bin", modeDir | 0o755, ""},
		{"bin/sh", modeSymlink | 0o777, "busybox"},
	} {
		e, ok := got[tt.name]
		if !ok || e.mode != tt.mode || string(e.data) != tt.data {
			t.Errorf("%s: %o %q (present %v), want %o %q", tt.name, e.mode, e.data, ok, tt.mode, tt.data)
		}
	}
	if len(got) != 6 {
		t.Errorf("%d entries, want 6", len(got))
	}
	var again bytes.Buffer
	a.Write(&again)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("the same archive written twice differs")
	}
}

func TestParseLdd(t *testing.T) {
	tests := []struct {
		name, out string
		want      []string
		err       bool
	}{
		{"dynamic", "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibuuid.so.1 => /lib/x86_64-linux-gnu/libuuid.so.1 (0x1)\n" +
			"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n",
			[]string{"/lib/x86_64-linux-gnu/libuuid.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}, false},
		{"static", "\tstatically linked\n", nil, false},
		{"missing", "\tlibfoo.so.1 => not found\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLdd([]byte(tt.out))
			if (err != nil) != tt.err || strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %q, %v; want %q, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestParseImageDep(t *testing.T) {
	show := "Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n\n" +
		"Package: linux-image-cloud-amd64\nVersion: 6.12.117-1\nDepends: linux-image-6.12.117+deb13-cloud-amd64 (= 6.12.117-1)\n"
	for _, tt := range []struct {
		k    Kernel
		want string
	}{
		{Kernel{Name: "6.1", Suite: "bookworm"}, "linux-image-6.1.0-50-cloud-amd64"},
		{Kernel{Name: "6.12", Suite: "trixie"}, "linux-image-6.12.117+deb13-cloud-amd64"},
	} {
		got, err := parseImageDep([]byte(show), tt.k)
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.k.Name, got, err, tt.want)
		}
	}
	if _, err := parseImageDep([]byte(show), Kernel{Name: "5.10", Suite: "bullseye"}); err == nil || !strings.Contains(err.Error(), "5.10") {
		t.Errorf("no 5.10 image: err = %v", err)
	}
}

func TestSelect(t *testing.T) {
	if ks, err := Select([]string{"all"}); err != nil || len(ks) != len(Matrix) {
		t.Errorf("all: %v, %v", ks, err)
	}
	if ks, err := Select([]string{"6.12", "5.10"}); err != nil || len(ks) != 2 || ks[0].Suite != "trixie" || ks[1].Suite != "bullseye" {
		t.Errorf("6.12,5.10: %v, %v", ks, err)
	}
	if _, err := Select([]string{"4.19"}); err == nil || !strings.Contains(err.Error(), `"4.19"`) {
		t.Errorf("unknown kernel: err = %v", err)
	}
}

func TestParseConsole(t *testing.T) {
	console := "noise\r\nVMTEST-BOOTED 6.1.0-50-cloud-amd64\r\nVMTEST-STEP-BEGIN probes\r\nout\r\nVMTEST-STEP-END probes 0\r\n" +
		"VMTEST-STEP-BEGIN probes-test\r\n--- FAIL: X\r\nVMTEST-STEP-END probes-test 1\r\nVMTEST-STEP-BEGIN e2e-test\r\n"
	b := parseConsole([]byte(console))
	if b.Release != "6.1.0-50-cloud-amd64" || b.Done {
		t.Errorf("release %q done %v", b.Release, b.Done)
	}
	want := []StepResult{{"probes", 0}, {"probes-test", 1}, {"e2e-test", -1}}
	if len(b.Steps) != len(want) {
		t.Fatalf("steps %+v, want %+v", b.Steps, want)
	}
	for i := range want {
		if b.Steps[i] != want[i] {
			t.Errorf("step %d = %+v, want %+v", i, b.Steps[i], want[i])
		}
	}
	if !parseConsole([]byte("VMTEST-DONE\n")).Done {
		t.Error("VMTEST-DONE not seen")
	}
	if got := parseConsole([]byte("VMTEST-INSMOD-FAILED /lib/modules/x/bcache.ko\r\n")).InsmodFailed; len(got) != 1 || got[0] != "/lib/modules/x/bcache.ko" {
		t.Errorf("failed insmod: %q", got)
	}
}

// judge fails every way a guest run can go wrong.
func TestJudge(t *testing.T) {
	u := &Unpacked{Release: "6.1.0-50-cloud-amd64"}
	c := &Config{Timeout: 1}
	ok := []StepResult{{"probes-test", 0}, {"e2e-test", 0}}
	tests := []struct {
		name string
		boot Boot
		want string // "" = passes
	}{
		{"pass", Boot{Release: u.Release, Done: true, Steps: ok}, ""},
		{"hung", Boot{Release: u.Release, TimedOut: true}, "hung"},
		{"never booted", Boot{}, "never reached /init"},
		{"wrong kernel", Boot{Release: "5.10.0-32-cloud-amd64", Done: true}, "guest runs 5.10"},
		{"stopped early", Boot{Release: u.Release, Steps: ok}, "stopped before the end"},
		{"step failed", Boot{Release: u.Release, Done: true, Steps: []StepResult{{"probes-test", 1}, {"e2e-test", 0}}}, "probes-test (exit 1"},
		{"step missing", Boot{Release: u.Release, Done: true, Steps: []StepResult{{"probes-test", 0}}}, "e2e-test (exit -1"},
		{"module not loaded", Boot{Release: u.Release, Done: true, Steps: ok, InsmodFailed: []string{"/lib/modules/x/bcache.ko"}}, "could not load /lib/modules/x/bcache.ko"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.boot
			r := c.judge(KernelResult{Boot: &b, Dir: t.TempDir()}, u)
			switch {
			case tt.want == "" && r.Err != nil:
				t.Errorf("failed: %v", r.Err)
			case tt.want != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.want)):
				t.Errorf("err = %v, want %q", r.Err, tt.want)
			}
		})
	}
}

// A test that skipped in the guest fails the kernel, unless it skipped a
// kernel function this kernel does not have.
func TestJudgeFailsSkips(t *testing.T) {
	u := &Unpacked{Release: "6.1.0-50-cloud-amd64"}
	c := &Config{Timeout: 1}
	ok := []StepResult{{"probes-test", 0}, {"e2e-test", 0}}
	allowed := "=== RUN   TestDirect\n=== RUN   TestDirect/fentry/blk_queue_enter\n" +
		"    direct_test.go:126: not on this kernel: function blk_queue_enter not in BTF\n" +
		"--- PASS: TestDirect (0.01s)\n    --- SKIP: TestDirect/fentry/blk_queue_enter (0.00s)\nPASS\n"
	bcache := "=== RUN   TestBcacheIncident\n    bcache_test.go:33: needs the disks\n--- SKIP: TestBcacheIncident (0.00s)\n" +
		"=== RUN   TestMechanismOverride\n=== RUN   TestMechanismOverride/kprobe\n    mechanism_test.go:9: no kprobes\n" +
		"--- PASS: TestMechanismOverride (3.00s)\n    --- SKIP: TestMechanismOverride/kprobe (0.00s)\nPASS\n"
	for _, tt := range []struct {
		name, probes, e2e, want string
	}{
		{"no skips", "--- PASS: TestA (0.00s)\n", "--- PASS: TestB (0.00s)\n", ""},
		{"function absent on this kernel", allowed, "", ""},
		{"skipped where it must run", allowed, bcache, "e2e-test (skipped TestBcacheIncident, TestMechanismOverride/kprobe"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, log := range map[string]string{"probes-test": tt.probes, "e2e-test": tt.e2e} {
				if err := os.WriteFile(filepath.Join(dir, name+".log"), []byte(log), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r := c.judge(KernelResult{Boot: &Boot{Release: u.Release, Done: true, Steps: ok}, Dir: dir}, u)
			switch {
			case tt.want == "" && r.Err != nil:
				t.Errorf("failed: %v", r.Err)
			case tt.want != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.want)):
				t.Errorf("err = %v, want %q", r.Err, tt.want)
			}
		})
	}
}

func TestInitScript(t *testing.T) {
	s := initScript([]string{"/lib/modules/x/loop.ko"}, []string{"A=it's"}, []Step{{Name: "one", Cmd: "echo hi"}})
	for _, want := range []string{
		"insmod /lib/modules/x/loop.ko || echo 'VMTEST-INSMOD-FAILED /lib/modules/x/loop.ko'",
		`export A='it'\''s'`,
		"echo 'VMTEST-STEP-BEGIN one'",
		"( echo hi ; echo $? > /results/one.rc ) 2>&1 | tee /results/one.log",
		"VMTEST-STEP-END one $(cat /results/one.rc)",
		"poweroff -f",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	if !strings.HasPrefix(s, "#!/bin/sh\n") {
		t.Error("no #!/bin/sh")
	}
}

func TestMatrixTable(t *testing.T) {
	cols := []MatrixColumn{
		{Kernel: "5.10", Release: "5.10.0-32-cloud-amd64", Passed: true, Probes: []probeRow{
			{Name: "freeze", Mechanism: "fentry", Status: "ok"}, {Name: "submit", Mechanism: "tp_btf", Status: "ok"}}},
		{Kernel: "6.1", Release: "6.1.0-50-cloud-amd64", Passed: false, Probes: []probeRow{
			{Name: "freeze", Mechanism: "", Status: "unavailable"}}},
	}
	got := MatrixTable(cols)
	golden := filepath.Join("testdata", "matrix.md")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(golden, []byte(got), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestExtractResults(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "results.img")
	if err := ensureImage(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := ExtractResults(img, filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "no files") {
		t.Errorf("empty disk: err = %v", err)
	}
}

func TestProgressWriter(t *testing.T) {
	var out bytes.Buffer
	p := &ProgressWriter{W: &out, Prefix: "> "}
	for _, chunk := range []string{"busybox: noise\r\nVMTEST-STEP-", "BEGIN probes\r\n=== RUN   TestX\n--- PASS: TestX (0.1s)\n    --- PASS: TestX/a\n", "--- FAIL: TestY"} {
		p.Write([]byte(chunk))
	}
	if got, want := out.String(), "> VMTEST-STEP-BEGIN probes\n> --- PASS: TestX (0.1s)\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	p.Write([]byte(" (2s)\n"))
	if !strings.HasSuffix(out.String(), "> --- FAIL: TestY (2s)\n") {
		t.Errorf("a line split across writes: %q", out.String())
	}
}

// A kernel from elsewhere is taken from the cache as it is: no apt runs (the
// mirror here does not exist), and a missing tree says where to put it.
func TestFetchKernelFromElsewhere(t *testing.T) {
	cache := t.TempDir()
	k := Kernel{Name: "custom", Release: "6.6.6-custom"}
	f := &Fetcher{Cache: cache, Mirror: "http://nowhere.invalid/debian", Log: t.Logf}
	if _, err := f.Fetch(context.Background(), k); err == nil || !strings.Contains(err.Error(), filepath.Join(cache, "kernels", k.Release)) {
		t.Errorf("no tree: err = %v, want it to name the directory", err)
	}
	root := filepath.Join(cache, "kernels", k.Release)
	for _, p := range []string{"boot/vmlinuz-" + k.Release, "lib/modules/" + k.Release + "/modules.dep"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	u, err := f.Fetch(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	if u.Release != k.Release || u.Vmlinuz != filepath.Join(root, "boot", "vmlinuz-"+k.Release) || u.Root != root {
		t.Errorf("unpacked %+v", u)
	}
	if _, err := os.Stat(filepath.Join(cache, "apt")); err == nil {
		t.Errorf("apt state made for a kernel from elsewhere")
	}
}

// The matrix leaves out the cases it cannot run, in the step's command;
// a developer's own selection runs as given.
func TestGuestStepsLeaveOut(t *testing.T) {
	cmd := func(sel Selection) string {
		for _, s := range guestSteps(sel) {
			if s.Name == "e2e-test" {
				return s.Cmd
			}
		}
		return ""
	}
	c := cmd(Selection{})
	if !strings.Contains(c, "TestWritebackCauses") || !strings.Contains(c, "TestArmedAuto|TestServeArmedAuto") || strings.Contains(c, "-test.skip") != (len(leftOut) > 0) {
		t.Errorf("matrix: %s", c)
	}
	for _, l := range leftOut {
		if !strings.Contains(c, l.pattern) {
			t.Errorf("%s does not leave out %s", c, l.pattern)
		}
	}
	if c := cmd(Selection{E2ERun: "TestWritebackCauses"}); strings.Contains(c, "-test.skip") {
		t.Errorf("own selection: %s", c)
	}
}

// The probes step never runs the experiments run by hand (they would skip,
// which fails a kernel), in the matrix or in a developer's own selection.
func TestGuestStepsLeaveOutByHand(t *testing.T) {
	for _, sel := range []Selection{{}, {ProbesRun: "TestCompletions"}} {
		var c string
		for _, s := range guestSteps(sel) {
			if s.Name == "probes-test" {
				c = s.Cmd
			}
		}
		for _, b := range byHand {
			if !strings.Contains(c, "-test.skip") || !strings.Contains(c, "^"+b.pattern+"$") {
				t.Errorf("selection %+v: %s does not leave out %s", sel, c, b.pattern)
			}
		}
	}
}

func TestFailedTests(t *testing.T) {
	for _, tc := range []struct {
		name string
		logs map[string]string // step name to its log; absent: no log written
		code map[string]int
		want []string
	}{
		{"top-level and subtests", map[string]string{"probes-test": "=== RUN   TestA\n--- FAIL: TestA (1.2s)\n    --- FAIL: TestA/sub (0.1s)\n--- PASS: TestB (0s)\nFAIL\n"},
			map[string]int{"probes-test": 1, "e2e-test": 0}, []string{"probes-test: TestA, TestA/sub"}},
		{"a step without a named test", map[string]string{"e2e-test": "panic: boom\n"},
			map[string]int{"probes-test": 0, "e2e-test": 2}, []string{"e2e-test: exit 2, no test named"}},
		{"a step that never ended", nil, map[string]int{"probes-test": -1}, []string{"probes-test: exit -1, no test named"}},
		{"all passed", nil, map[string]int{"probes-test": 0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := &Boot{}
			for _, n := range []string{"probes-test", "e2e-test"} {
				c, ok := tc.code[n]
				if !ok {
					continue
				}
				b.Steps = append(b.Steps, StepResult{Name: n, Code: c})
				if l, ok := tc.logs[n]; ok {
					if err := os.WriteFile(filepath.Join(dir, n+".log"), []byte(l), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			got := FailedTests(KernelResult{Dir: dir, Boot: b})
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("FailedTests = %q, want %q", got, tc.want)
			}
		})
	}
}
