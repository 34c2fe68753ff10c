package cmd

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/live"
	"github.com/whyslow/whyslow/probes"
)

func TestTraceFlags(t *testing.T) {
	tests := []struct {
		kind live.Kind
		args []string
		want TraceOptions
	}{
		{live.KindSubmit, nil, TraceOptions{Kind: live.KindSubmit, Min: time.Millisecond, BTF: probes.DefaultBTF}},
		{live.KindSubmit, []string{"--min", "250us", "--ms", "-p", "42", "-d", "loop3", "--duration", "10s", "--json"},
			TraceOptions{Kind: live.KindSubmit, Min: 250 * time.Microsecond, Ms: true, Pid: 42, Device: "loop3", Duration: 10 * time.Second, JSON: true, BTF: probes.DefaultBTF}},
		{live.KindSubmit, []string{"--mechanism", "submitfn=tp_btf"},
			TraceOptions{Kind: live.KindSubmit, Min: time.Millisecond, BTF: probes.DefaultBTF, Mechanism: []string{"submitfn=tp_btf"}}},
		{live.KindExec, []string{"--json"}, TraceOptions{Kind: live.KindExec, JSON: true, BTF: probes.DefaultBTF}},
		{live.KindUevent, []string{"--duration", "1m"}, TraceOptions{Kind: live.KindUevent, Duration: time.Minute, BTF: probes.DefaultBTF}},
		{live.KindFreeze, []string{"--device", "sda", "--pid", "7", "--min", "5ms", "--mechanism", "kprobe"},
			TraceOptions{Kind: live.KindFreeze, Device: "sda", Pid: 7, Min: 5 * time.Millisecond, BTF: probes.DefaultBTF, Mechanism: []string{"kprobe"}}},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind)+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			ios, _, _ := testIO()
			var got *TraceOptions
			c := NewCmdTraceKind(ios, tt.kind, func(o *TraceOptions) error { got = o; return nil })
			c.SetArgs(tt.args)
			c.SetOut(io.Discard)
			c.SetErr(io.Discard)
			if err := c.Execute(); err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", tt.want) {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestTraceUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"trace"}, "trace needs an event kind"},
		{[]string{"trace", "bogus"}, `unknown command "bogus"`},
		{[]string{"trace", "submit", "--min", "-1ms"}, "--min must not be negative"},
		{[]string{"trace", "submit", "--duration", "-1s"}, "--duration must not be negative"},
		{[]string{"trace", "submit", "-p", "-3"}, "--pid must not be negative"},
		{[]string{"trace", "submit", "--mechanism", "uprobe"}, `unknown mechanism "uprobe"`},
		{[]string{"trace", "submit", "--mechanism", "freeze=kprobe"}, `no probe "freeze"`},
		{[]string{"trace", "exec", "--mechanism", "kprobe"}, "no probe offers it"},
		{[]string{"trace", "exec", "--min", "1ms"}, "unknown flag: --min"},
		{[]string{"trace", "uevent", "-d", "sda"}, "unknown shorthand flag: 'd'"},
		{[]string{"trace", "freeze", "--ms"}, "unknown flag: --ms"},
		{[]string{"trace", "exec", "now"}, `unknown command "now"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			ios, out, errb := testIO()
			if code := Execute(ios, tt.args); code != ExitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, ExitUsage, errb)
			}
			if !strings.Contains(errb.String(), tt.wantErr) || strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("stderr %q, want one line with %q", errb, tt.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}
