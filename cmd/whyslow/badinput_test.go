package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Every bad input gets one clear line on stderr naming what is wrong, a
// non-zero exit code, and no panic.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	badRules := filepath.Join(dir, "rules")
	if err := os.Mkdir(badRules, 0o755); err != nil {
		t.Fatal(err)
	}
	badRule := filepath.Join(badRules, "broken.yaml")
	if err := os.WriteFile(badRule, []byte("id: broken\ntitle: Broken\nseverity: warning\nscope: device\nwhen: Device.Stalls.Count() >\nscore: 1\nexplain: x\nremedy: y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		root     bool // needs root to reach the check
		wantCode int
		wantErr  string
	}{
		{"unknown command", []string{"frobnicate"}, false, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"diagnose", "storage", "--bogus"}, false, 2, "unknown flag: --bogus"},
		{"bad duration", []string{"diagnose", "storage", "--duration", "soon"}, false, 2, `invalid argument "soon"`},
		{"negative duration", []string{"diagnose", "storage", "--duration", "-5s"}, false, 2, "--duration must be positive"},
		{"zero duration", []string{"diagnose", "storage", "--duration", "0"}, false, 2, "--duration must be positive"},
		{"negative min latency", []string{"diagnose", "storage", "--min-latency", "-1ms"}, false, 2, "--min-latency must not be negative"},
		{"bad format", []string{"diagnose", "storage", "--format", "xml"}, false, 2, `--format "xml"`},
		{"bad fail-on", []string{"diagnose", "storage", "--fail-on", "sometimes"}, false, 2, `--fail-on "sometimes"`},
		{"stray argument", []string{"diagnose", "storage", "now"}, false, 2, `unknown command "now"`},
		{"missing rules dir", []string{"diagnose", "storage", "--rules", filepath.Join(dir, "nope")}, false, 1, filepath.Join(dir, "nope")},
		{"invalid rule file", []string{"diagnose", "storage", "--rules", badRules}, false, 1, badRule + ":5:"},
		{"rules check invalid", []string{"rules", "check", badRule}, false, 1, badRule + ":5:"},
		{"rules check unreadable", []string{"rules", "check", filepath.Join(dir, "missing.yaml")}, false, 1, filepath.Join(dir, "missing.yaml")},
		{"unknown device", []string{"diagnose", "storage", "--device", "nosuchdisk0"}, false, 1, `--device "nosuchdisk0": no such block device`},
		{"no BTF", []string{"diagnose", "storage", "--duration", "1s", "--btf", filepath.Join(dir, "vmlinux")}, true, 1, "kernel BTF not readable at " + filepath.Join(dir, "vmlinux")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && (os.Geteuid() != 0 || testing.Short()) {
				t.Skip("needs root (and no -short) to get past the privilege check")
			}
			r := run(t, tt.args...)
			checkOneLineError(t, r, tt.wantCode, tt.wantErr)
		})
	}
}

// Run as an unprivileged user, diagnose says it needs root, and why.
func TestNotRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		r := run(t, "diagnose", "storage", "--duration", "1s")
		checkOneLineError(t, r, 1, "needs root")
		return
	}
	// Let user nobody reach the binary.
	if err := os.Chmod(filepath.Dir(whyslowBin), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"diagnose", "storage", "--duration", "1s"}, {"probes"}} {
		cmd := exec.Command(whyslowBin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		checkOneLineError(t, result{code: code, stdout: out.String(), stderr: errb.String()}, 1, "needs root")
	}
}

func checkOneLineError(t *testing.T, r result, code int, want string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d (stderr: %q)", r.code, code, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "whyslow: ") {
		t.Errorf("stderr is not one 'whyslow: ...' line: %q", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q does not mention %q", r.stderr, want)
	}
	if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
		t.Errorf("whyslow panicked: %s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("nothing should go to stdout on error, got %q", r.stdout)
	}
}
