package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// HookLinks is how many BPF links a process holds on one hook (a
// tracepoint, as the kernel names it), and the programs behind them:
// what the kernel dispatches there per event. Programs reached only by a
// tail call from one of them (whyslow's hook chains, probes/hookchain.go)
// hold no link: they cost no dispatch of their own.
type HookLinks struct {
	Hook     string   `json:"hook"`
	Kind     string   `json:"kind"` // "raw_tp" (tp_btf or raw tracepoint) or "perf" (a tracepoint through a perf event)
	Links    int      `json:"links"`
	Programs []string `json:"programs,omitempty"`
}

// linkFd is what the kernel says of one link descriptor in
// /proc/PID/fdinfo/FD.
type linkFd struct {
	kind   string // link_type
	progID int
	tp     string // tp_name: raw_tracepoint links (tp_btf ones too, on recent kernels), perf links on tracepoints
	btfID  int    // target_btf_id: tracing links (tp_btf before raw_tp links carried it)
}

// parseLinkFdinfo reads one fdinfo file's text; ok is false when the
// descriptor is not a link.
func parseLinkFdinfo(text string) (l linkFd, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		k, v, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "link_type":
			l.kind, ok = v, true
		case "prog_id":
			l.progID, _ = strconv.Atoi(v)
		case "tp_name":
			l.tp = v
		case "target_btf_id":
			l.btfID, _ = strconv.Atoi(v)
		}
	}
	return l, ok
}

// linkFds returns the links process pid holds, read from its descriptors
// while it runs, each with the tracepoint it is on when it is on one (a
// tp_btf link names it as tp_name on recent kernels, as the BTF id of
// btf_trace_<name> in the kernel's types on older ones).
func linkFds(pid int) ([]linkFd, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading %s's links: %w", dir, err)
	}
	var (
		fds    []linkFd
		kernel *btf.Spec
	)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		l, ok := parseLinkFdinfo(string(b))
		if !ok {
			continue
		}
		if l.tp == "" && l.kind == "tracing" && l.btfID > 0 {
			if kernel == nil {
				kernel, _ = btf.LoadKernelSpec()
			}
			if kernel != nil {
				if t, err := kernel.TypeByID(btf.TypeID(l.btfID)); err == nil {
					l.tp = strings.TrimPrefix(t.TypeName(), "btf_trace_")
				}
			}
		}
		fds = append(fds, l)
	}
	return fds, nil
}

// linkLayout returns the links process pid holds on tracepoints, per
// hook. Links on anything else (cgroups, uprobes, ...) are left out.
func linkLayout(pid int) ([]HookLinks, error) {
	fds, err := linkFds(pid)
	if err != nil {
		return nil, err
	}
	return groupLinks(fds, progName), nil
}

// progName is the name of program id ("" when it is gone).
func progName(id int) string {
	st, err := progStats(map[int]bool{id: true})
	if err != nil || st[id].name == "" {
		return ""
	}
	return st[id].name
}

// hookKind is the kind of hook link l is on ("raw_tp", "perf"), "" for
// none of them.
func hookKind(l linkFd) string {
	if l.tp == "" {
		return ""
	}
	switch l.kind {
	case "raw_tracepoint", "tracing":
		return "raw_tp"
	case "perf":
		return "perf"
	}
	return ""
}

// groupLinks counts the links of fds per hook and kind, sorted by hook;
// progName names a program id.
func groupLinks(fds []linkFd, progName func(int) string) []HookLinks {
	by := map[[2]string]*HookLinks{}
	var out []*HookLinks
	for _, l := range fds {
		kind, hook := hookKind(l), l.tp
		if kind == "" {
			continue
		}
		h := by[[2]string{hook, kind}]
		if h == nil {
			h = &HookLinks{Hook: hook, Kind: kind}
			by[[2]string{hook, kind}] = h
			out = append(out, h)
		}
		h.Links++
		if n := progName(l.progID); n != "" {
			h.Programs = append(h.Programs, n)
		}
	}
	slices.SortFunc(out, func(a, b *HookLinks) int {
		return strings.Compare(a.Hook+" "+a.Kind, b.Hook+" "+b.Kind)
	})
	res := make([]HookLinks, len(out))
	for i, h := range out {
		slices.Sort(h.Programs)
		res[i] = *h
	}
	return res
}

// schedHooks are the hooks the pipe ping-pong fires on every round trip:
// system calls, context switches, wake-ups.
var schedHooks = []string{"sys_enter", "sys_exit", "sched_switch", "sched_waking"}

// floorHooks are the raw tracepoints of layout, each as many times as it
// has links there: the empty programs of the "as many as whyslow's" row.
func floorHooks(layout []HookLinks) []string {
	var tps []string
	for _, h := range layout {
		if h.Kind != "raw_tp" {
			continue
		}
		for range h.Links {
			tps = append(tps, h.Hook)
		}
	}
	return tps
}

// layoutWhat describes the "as many as whyslow's" row: the counts on the
// ping-pong's hooks, then how many more programs sit on other hooks
// (which the ping-pong does not fire, or rarely).
func layoutWhat(layout []HookLinks) string {
	var on []string
	others, otherHooks := 0, 0
	for _, hook := range schedHooks {
		n := 0
		for _, h := range layout {
			if h.Kind == "raw_tp" && h.Hook == hook {
				n = h.Links
			}
		}
		on = append(on, fmt.Sprintf("%d on `%s`", n, hook))
	}
	for _, h := range layout {
		if h.Kind == "raw_tp" && !slices.Contains(schedHooks, h.Hook) {
			others += h.Links
			otherHooks++
		}
	}
	s := "empty programs as many as whyslow's links (read from its descriptors while it ran): " + strings.Join(on, ", ")
	if others > 0 {
		s += fmt.Sprintf(", %d on %d other hooks", others, otherHooks)
	}
	return s
}

// progIDsOn returns the ids of the programs pid has linked on raw
// tracepoint hook (every program of its that the kernel dispatches
// there).
func progIDsOn(pid int, hook string) map[int]bool {
	ids := map[int]bool{}
	fds, _ := linkFds(pid)
	for _, l := range fds {
		if hookKind(l) == "raw_tp" && l.tp == hook {
			ids[l.progID] = true
		}
	}
	return ids
}

// layoutText is layout on one line, for the log: hook=links per hook.
func layoutText(layout []HookLinks) string {
	var parts []string
	for _, h := range layout {
		p := fmt.Sprintf("%s=%d", h.Hook, h.Links)
		if h.Kind != "raw_tp" {
			p += "(" + h.Kind + ")"
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// layoutSentence says, for the sched section, which links whyslow held on
// the ping-pong's hooks ("" without a layout).
func layoutSentence(layout []HookLinks) string {
	if len(layout) == 0 {
		return ""
	}
	var on []string
	for _, hook := range schedHooks {
		for _, h := range layout {
			if h.Kind == "raw_tp" && h.Hook == hook {
				on = append(on, fmt.Sprintf("`%s` %d (%s)", hook, h.Links, strings.Join(h.Programs, ", ")))
			}
		}
	}
	s := "whyslow's links on these hooks, read from its descriptors (`/proc/PID/fdinfo`) while it ran"
	if len(on) > 0 {
		s += ": " + strings.Join(on, "; ")
	} else {
		s += ": none"
	}
	return s + ". A program a linked one tail-calls (the probes' hook chains) holds no link: the kernel dispatches it no event of its own, and counts its run time in its caller's."
}
