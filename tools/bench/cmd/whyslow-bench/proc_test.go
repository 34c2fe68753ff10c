package main

import (
	"strings"
	"testing"
	"time"
)

// TestStopSignals: whyslow gets one SIGINT (a second aborts it before its
// report is written); other tools get it again every half second until they
// end. The tool here counts the SIGINTs it gets over 1.5 s after the first.
func TestStopSignals(t *testing.T) {
	const script = `n=0; trap 'n=$((n+1))' INT; echo ready
while [ $n -eq 0 ]; do sleep 0.05; done
i=0; while [ $i -lt 30 ]; do sleep 0.05; i=$((i+1)); done
echo "signals $n"`
	for _, tc := range []struct {
		name string
		once bool
		want func(string) bool
	}{
		{"whyslow: once", true, func(s string) bool { return s == "signals 1" }},
		{"others: again", false, func(s string) bool { return s != "signals 1" && strings.HasPrefix(s, "signals ") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := startProc("sh", readiness{line: bpftraceReady}, "sh", "-c", script)
			if err != nil {
				t.Fatal(err)
			}
			p.signalOnce = tc.once
			if err := p.waitReady(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := p.stop(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if got := p.lastLines(); !tc.want(strings.TrimSpace(lastLine(got))) {
				t.Errorf("output %q", got)
			}
		})
	}
}

// lastLine is the last of the lines lastLines joins.
func lastLine(s string) string {
	if i := strings.LastIndex(s, " | "); i >= 0 {
		return s[i+3:]
	}
	return s
}
