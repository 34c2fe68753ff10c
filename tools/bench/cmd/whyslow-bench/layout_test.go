package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseLinkFdinfo(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		want       linkFd
		ok         bool
	}{
		{"raw_tp (tp_btf on 6.18)", "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1038\nlink_type:\traw_tracepoint\nlink_id:\t155270\nprog_tag:\tf87e6feb3acde1f1\nprog_id:\t172369\ntp_name:\tsched_switch\ncookie:\t0\n",
			linkFd{kind: "raw_tracepoint", progID: 172369, tp: "sched_switch"}, true},
		{"perf tracepoint", "link_type:\tperf\nlink_id:\t155245\nprog_tag:\t3bb11aa699bcd73f\nprog_id:\t172346\ntp_name:\tiocost_ioc_vrate_adj\nevent_type:\ttracepoint\ncookie:\t0\n",
			linkFd{kind: "perf", progID: 172346, tp: "iocost_ioc_vrate_adj"}, true},
		{"tracing (older kernels' tp_btf)", "link_type:\ttracing\nlink_id:\t3\nprog_tag:\tab\nprog_id:\t12\nattach_type:\t23\ntarget_obj_id:\t1\ntarget_btf_id:\t4242\n",
			linkFd{kind: "tracing", progID: 12, btfID: 4242}, true},
		{"a program, not a link", "pos:\t0\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\tab\nprog_id:\t12\n", linkFd{progID: 12}, false},
		{"a file", "pos:\t0\nflags:\t02\nmnt_id:\t25\n", linkFd{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseLinkFdinfo(tt.text)
			if ok != tt.ok || (ok && got != tt.want) {
				t.Errorf("parseLinkFdinfo = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// The layout counts links per hook; the floor row attaches as many empty
// programs on each raw tracepoint, none for perf tracepoints.
func TestLayoutFloor(t *testing.T) {
	names := map[int]string{1: "sc_btf_enter", 2: "sc_btf_exit", 3: "sc_switch", 4: "sc_waking", 5: "sub_rq_done", 6: "svc_rq_requeue", 7: "df_rq_requeue", 8: "wb_wbt_step"}
	fds := []linkFd{
		{kind: "raw_tracepoint", progID: 3, tp: "sched_switch"},
		{kind: "raw_tracepoint", progID: 1, tp: "sys_enter"},
		{kind: "tracing", progID: 2, tp: "sys_exit"},
		{kind: "raw_tracepoint", progID: 4, tp: "sched_waking"},
		{kind: "raw_tracepoint", progID: 5, tp: "block_rq_complete"},
		{kind: "raw_tracepoint", progID: 6, tp: "block_rq_requeue"},
		{kind: "raw_tracepoint", progID: 7, tp: "block_rq_requeue"},
		{kind: "perf", progID: 8, tp: "wbt_step"},
		{kind: "cgroup", progID: 9},
		{kind: "tracing", progID: 10}, // target unknown
	}
	layout := groupLinks(fds, func(id int) string { return names[id] })
	want := []HookLinks{
		{"block_rq_complete", "raw_tp", 1, []string{"sub_rq_done"}},
		{"block_rq_requeue", "raw_tp", 2, []string{"df_rq_requeue", "svc_rq_requeue"}},
		{"sched_switch", "raw_tp", 1, []string{"sc_switch"}},
		{"sched_waking", "raw_tp", 1, []string{"sc_waking"}},
		{"sys_enter", "raw_tp", 1, []string{"sc_btf_enter"}},
		{"sys_exit", "raw_tp", 1, []string{"sc_btf_exit"}},
		{"wbt_step", "perf", 1, []string{"wb_wbt_step"}},
	}
	if !reflect.DeepEqual(layout, want) {
		t.Fatalf("groupLinks =\n%+v\nwant\n%+v", layout, want)
	}
	if got, want := floorHooks(layout), []string{"block_rq_complete", "block_rq_requeue", "block_rq_requeue", "sched_switch", "sched_waking", "sys_enter", "sys_exit"}; !reflect.DeepEqual(got, want) {
		t.Errorf("floorHooks = %q, want %q", got, want)
	}
	if got, want := layoutWhat(layout), "empty programs as many as whyslow's links (read from its descriptors while it ran): 1 on `sys_enter`, 1 on `sys_exit`, 1 on `sched_switch`, 1 on `sched_waking`, 3 on 2 other hooks"; got != want {
		t.Errorf("layoutWhat =\n%s\nwant\n%s", got, want)
	}
	if s := layoutSentence(layout); !strings.Contains(s, "`sched_switch` 1 (sc_switch)") || !strings.Contains(s, "`sys_exit` 1 (sc_btf_exit)") {
		t.Errorf("layoutSentence = %q: does not name the links on the ping-pong's hooks", s)
	}
	if s := layoutSentence(nil); s != "" {
		t.Errorf("layoutSentence(nil) = %q, want nothing (results without a layout render as before)", s)
	}
}

// On the real kernel: the links a process holds are found on their hooks,
// as many as it holds (root, BPF).
func TestLinkLayoutOfThisProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach BPF programs")
	}
	stop, err := emptyPrograms("sched_switch", "sched_switch", "sys_exit")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	layout, err := linkLayout(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := []HookLinks{{"sched_switch", "raw_tp", 2, []string{"floor", "floor"}}, {"sys_exit", "raw_tp", 1, []string{"floor"}}}
	if !reflect.DeepEqual(layout, want) {
		t.Errorf("linkLayout = %+v, want %+v", layout, want)
	}
	if ids := progIDsOn(os.Getpid(), "sched_switch"); len(ids) != 2 {
		t.Errorf("progIDsOn(sched_switch) = %v, want the 2 programs", ids)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if layout, _ := linkLayout(os.Getpid()); len(layout) != 0 {
		t.Errorf("after detaching: linkLayout = %+v, want none", layout)
	}
}
