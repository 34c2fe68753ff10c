package symbolize

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

//go:noinline
func markerFunction(n int) int { return n*3 + 1 }

// TestUserOwnFunction symbolizes an address inside a function of the test
// binary and cross-checks the name with the Go runtime.
func TestUserOwnFunction(t *testing.T) {
	pc := reflect.ValueOf(markerFunction).Pointer()
	fn := runtime.FuncForPC(pc)
	if fn == nil {
		t.Fatal("runtime does not know markerFunction")
	}
	u, err := LoadUser("/proc", uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	for _, off := range []uint64{0, 5} {
		f := u.Frame(uint64(pc) + off)
		if f.Symbol != fn.Name() || f.Offset != off {
			t.Errorf("Frame(%#x+%d) = %+v, want symbol %q offset %d", pc, off, f, fn.Name(), off)
		}
		if f.Module != exe {
			t.Errorf("module %q, want %q", f.Module, exe)
		}
	}
	// A caller's return address resolves to the caller.
	callers := make([]uintptr, 8)
	n := runtime.Callers(1, callers)
	addrs := make([]uint64, n)
	for i := range n {
		addrs[i] = uint64(callers[i])
	}
	frames := u.Frames(addrs)
	if frames[0].Symbol != "github.com/whyslow/whyslow/internal/symbolize.TestUserOwnFunction" {
		t.Errorf("innermost frame %+v", frames[0])
	}
	if frames[1].Symbol != "testing.tRunner" {
		t.Errorf("caller frame %+v", frames[1])
	}
}

// TestUserSharedLibrary symbolizes a libc function in a PIE child process,
// where the load bias matters: the address is computed from libc's own
// symbol table and the child's maps, independently of the code under test.
func TestUserSharedLibrary(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no /bin/sleep:", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	// Wait until the dynamic loader has mapped libc.
	var libc, start, off string
	for range 200 {
		libc, start, off = findLibc(t, pid)
		if libc != "" {
			break
		}
		runtime.Gosched()
		exec.Command("/bin/true").Run()
	}
	if libc == "" {
		t.Skip("no executable libc mapping in /bin/sleep")
	}
	ef, err := elf.Open(libc)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	syms, err := ef.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var target elf.Symbol
	for _, s := range syms {
		if s.Name == "clock_nanosleep" && s.Value != 0 {
			target = s
		}
	}
	if target.Value == 0 {
		t.Skip("libc has no clock_nanosleep")
	}
	var seg elf.ProgHeader
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && target.Value >= p.Vaddr && target.Value < p.Vaddr+p.Filesz {
			seg = p.ProgHeader
		}
	}
	mstart, _ := strconv.ParseUint(start, 16, 64)
	moff, _ := strconv.ParseUint(off, 16, 64)
	addr := mstart + (target.Value - seg.Vaddr + seg.Off - moff) + 7

	u, err := LoadUser("/proc", uint32(pid))
	if err != nil {
		t.Fatal(err)
	}
	f := u.Frame(addr)
	// Aliases (e.g. __clock_nanosleep) share the address; any is right.
	if !strings.Contains(f.Symbol, "clock_nanosleep") || f.Offset != 7 || f.Module != libc {
		t.Errorf("Frame(%#x) = %+v, want clock_nanosleep+7 in %s", addr, f, libc)
	}
}

func findLibc(t *testing.T, pid int) (path, start, off string) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 6 && strings.Contains(fs[5], "libc.so") && strings.Contains(fs[1], "x") {
			s, _, _ := strings.Cut(fs[0], "-")
			return fs[5], s, fs[2]
		}
	}
	return "", "", ""
}

// TestUserMissingBinaries covers mappings whose files cannot be read: the
// frame names the module and has no symbol.
func TestUserMissingBinaries(t *testing.T) {
	u, err := LoadUser("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr uint64
		want event.Frame
	}{
		{0x401234, event.Frame{Addr: 0x401234, Module: "/nonexistent/bin/app"}},
		{0x7f0000000010, event.Frame{Addr: 0x7f0000000010, Module: "/tmp/gone (deleted)"}},
		{0x7f0000100010, event.Frame{Addr: 0x7f0000100010, Module: AnonModule}},
		{0x7ffd00000010, event.Frame{Addr: 0x7ffd00000010, Module: "[vdso]"}},
		{0x400010, event.Frame{Addr: 0x400010}}, // not executable
		{0x10, event.Frame{Addr: 0x10}},
	}
	for _, tt := range tests {
		if got := u.Frame(tt.addr); got != tt.want {
			t.Errorf("Frame(%#x) = %+v, want %+v", tt.addr, got, tt.want)
		}
	}
}

func TestParseMapsErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"no range dash", "00400000 r-xp 00000000 fe:00 1 /a\n"},
		{"bad start", "zz-00401000 r-xp 00000000 fe:00 1 /a\n"},
		{"end before start", "00402000-00401000 r-xp 00000000 fe:00 1 /a\n"},
		{"bad offset", "00400000-00401000 r-xp zz fe:00 1 /a\n"},
		{"bad inode", "00400000-00401000 r-xp 00000000 fe:00 x /a\n"},
		{"short perms", "00400000-00401000 r 00000000 fe:00 1 /a\n"},
		{"too few fields", "00400000-00401000 r-xp\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseMaps(strings.NewReader(tt.in)); err == nil {
				t.Error("no error")
			}
		})
	}
	m, err := parseMaps(strings.NewReader("00400000-00401000 r-xp 00001000 fe:00 12 /path with space/x\n"))
	if err != nil || len(m) != 1 || m[0].path != "/path with space/x" || m[0].off != 0x1000 || m[0].inode != 12 {
		t.Errorf("parseMaps = %+v, %v", m, err)
	}
}

func TestUserCache(t *testing.T) {
	c := NewUserCache("/proc", 2, 4)
	pc := uint64(reflect.ValueOf(markerFunction).Pointer())
	want := runtime.FuncForPC(uintptr(pc)).Name()
	for range 3 {
		fr, err := c.Frames(uint32(os.Getpid()), []uint64{pc})
		if err != nil || fr[0].Symbol != want {
			t.Fatalf("Frames = %+v, %v", fr, err)
		}
	}
	// A process that does not exist: addresses only, and an error.
	fr, err := c.Frames(1<<30, []uint64{pc})
	if err == nil || len(fr) != 1 || fr[0] != (event.Frame{Addr: pc}) {
		t.Errorf("Frames of missing pid = %+v, %v", fr, err)
	}
	// Bounded: a third process evicts the least recently used.
	c.Frames(1, []uint64{1})
	c.Frames(2, []uint64{1})
	c.Frames(uint32(os.Getpid()), []uint64{pc})
	if n := c.procs.len(); n > 2 {
		t.Errorf("%d processes cached, bound is 2", n)
	}
}

func TestReadBinaryGarbage(t *testing.T) {
	for _, in := range []string{"", "not an elf file", "\x7fELF\x02\x01\x01" + strings.Repeat("\xff", 64)} {
		if b, err := readBinary(strings.NewReader(in)); err == nil {
			t.Errorf("readBinary(%q) = %+v, want an error", in, b)
		}
	}
}

// TestGoFuncs reads Go binaries' function tables both ways, goFuncs and
// debug/gosym, and compares them: every function, its start, size and
// name. The binaries are this test's and, stripped, the go command's.
func TestGoFuncs(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{self}
	if goCmd, err := exec.LookPath("go"); err == nil {
		paths = append(paths, goCmd)
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			ef, err := elf.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer ef.Close()
			sect := ef.Section(".gopclntab")
			if sect == nil {
				sect = ef.Section(".data.rel.ro.gopclntab")
			}
			text := ef.Section(".text")
			if sect == nil || text == nil {
				t.Fatalf("%s has no .gopclntab or .text", p)
			}
			data, err := sect.Data()
			if err != nil {
				t.Fatal(err)
			}
			got, ok := goFuncs(data, text.Addr, map[uint64]bool{})
			if !ok {
				t.Fatalf("goFuncs does not read %s's pclntab (magic %#x)", p, data[:4])
			}
			want := gosymFuncs(data, text.Addr, map[uint64]bool{})
			if len(got) < 1000 || len(got) != len(want) {
				t.Fatalf("goFuncs: %d functions, debug/gosym %d", len(got), len(want))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("function %d: goFuncs %+v, debug/gosym %+v", i, got[i], want[i])
				}
			}
			// A truncated or garbled table gives no functions and no panic.
			for _, cut := range []int{16, 64, len(data) / 2} {
				if fs, _ := goFuncs(data[:cut], text.Addr, map[uint64]bool{}); len(fs) != 0 {
					t.Errorf("table cut at %d bytes: %d functions", cut, len(fs))
				}
			}
			bad := slices.Clone(data)
			for i := 64; i < len(bad); i += 7 {
				bad[i] ^= 0xa5
			}
			goFuncs(bad, text.Addr, map[uint64]bool{})
		})
	}
}
