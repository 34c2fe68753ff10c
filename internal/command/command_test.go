package command

import (
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		args    []string
		out     string // the output
		err     string // in the error; "" for none
	}{
		{"output", 10 * time.Second, []string{"sh", "-c", "echo out; echo err >&2"}, "out\nerr\n", ""},
		{"exit status", 10 * time.Second, []string{"sh", "-c", "echo why >&2; exit 3"}, "why\n", "sh -c echo why >&2; exit 3: exit status 3: why"},
		{"timeout", 200 * time.Millisecond, []string{"sleep", "30"}, "", "sleep 30: timed out after 200ms"},
		{"missing", 10 * time.Second, []string{"whyslow-no-such-program"}, "", "whyslow-no-such-program"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Run(tc.timeout, tc.args[0], tc.args[1:]...)
			if out != tc.out {
				t.Errorf("output %q, want %q", out, tc.out)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want one with %q", err, tc.err)
			}
		})
	}
}
