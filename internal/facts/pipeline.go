package facts

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"
)

// PipelineWindow is how close together the execs of commands in one shell
// pipeline (`arcconf ... | grep Temperature`) start.
const PipelineWindow = 200 * time.Millisecond

// pipelines folds commands that always run together, started by the same
// parent within PipelineWindow of each other, into one Command: the
// pipeline's leader, whose Pipeline names every member. The leader is the
// member that wrote a device's uevent file (what makes a command set off
// uevents), else the one usually started first. Pipeline lists the leader
// first, then the others in the order they usually start. Without this, every member
// of `arcconf | grep` would look like a periodic trigger of its own.
func (b *builder) pipelines() {
	cmds := b.run.Commands
	parent := make([]int, len(cmds))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	for _, pair := range pipelineCandidates(cmds) {
		i, j := pair[0], pair[1]
		if runTogether(cmds[i], cmds[j]) && runTogether(cmds[j], cmds[i]) {
			parent[find(j)] = find(i)
		}
	}
	groups := map[int][]*Command{}
	var roots []int
	for i, c := range cmds {
		r := find(i)
		if _, ok := groups[r]; !ok {
			roots = append(roots, r)
		}
		groups[r] = append(groups[r], c)
	}
	if len(roots) == len(cmds) {
		return
	}
	var out []*Command
	for _, r := range roots {
		members := groups[r]
		if len(members) == 1 {
			out = append(out, members[0])
			continue
		}
		slices.SortStableFunc(members, func(a, c *Command) int { return startedBefore(c, a) - startedBefore(a, c) })
		lead := members[0]
		best := b.ueventWrites(lead)
		for _, m := range members[1:] {
			if n := b.ueventWrites(m); n > best {
				lead, best = m, n
			}
		}
		// Which member feeds which is not observable: the leader comes first.
		lines := []string{lead.Line()}
		for _, m := range members {
			if m != lead {
				lines = append(lines, m.Line())
			}
		}
		lead.Pipeline = strings.Join(lines, " | ")
		out = append(out, lead)
	}
	b.run.Commands = out
}

// MaxPipelineNeighbors is how many execs by the same parent process may
// follow each of its execs within PipelineWindow, on average, for its
// commands to be folded into pipelines: beyond (a parent starting some 160
// commands a second, all the time), starting together says nothing.
const MaxPipelineNeighbors = 32

// pipelineCandidates returns the pairs i < j of commands that may run
// together, in order: those with the same parent command, each run at
// least twice, with an exec of j by the same parent process within
// PipelineWindow of one of the first execs of i (runTogether needs 80% of
// i's execs paired, so one of any fifth of them plus one is). Comparing only
// these keeps a trace of many distinct commands from taking quadratic time.
func pipelineCandidates(cmds []*Command) [][2]int {
	type exec struct {
		at  time.Duration
		cmd int
	}
	type parent struct {
		comm string
		pid  uint32
	}
	byParent := map[parent][]exec{}
	for i, c := range cmds {
		if c.Count < 2 {
			continue
		}
		for n, e := range c.Execs {
			p := parent{c.ParentComm, ppidOf(c, n)}
			byParent[p] = append(byParent[p], exec{e.At, i})
		}
	}
	for p, es := range byParent {
		slices.SortFunc(es, func(a, b exec) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.cmd, b.cmd)) })
		// How many execs each one has within PipelineWindow after it, on
		// average: a parent that starts commands that densely runs no
		// pipeline timing could tell apart, and pairing them all would
		// take quadratic time.
		near, j := 0, 0
		for i := range es {
			for j < len(es) && es[j].at <= es[i].at+PipelineWindow {
				j++
			}
			near += j - i - 1
		}
		if near > MaxPipelineNeighbors*len(es) {
			delete(byParent, p)
		}
	}
	seen := map[[2]int]bool{}
	var out [][2]int
	for i, c := range cmds {
		if c.Count < 2 {
			continue
		}
		k := c.Count - (4*c.Count+4)/5 + 1 // misses runTogether allows, plus one
		for x, e := range c.Execs[:min(k, len(c.Execs))] {
			es := byParent[parent{c.ParentComm, ppidOf(c, x)}]
			lo := sort.Search(len(es), func(n int) bool { return es[n].at >= e.At-PipelineWindow })
			for n := lo; n < len(es) && es[n].at <= e.At+PipelineWindow; n++ {
				j := es[n].cmd
				if j == i {
					continue
				}
				pair := [2]int{min(i, j), max(i, j)}
				if !seen[pair] {
					seen[pair] = true
					out = append(out, pair)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b [2]int) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	return out
}

// ppidOf is the parent pid of a command's exec n, 0 when unknown.
func ppidOf(c *Command, n int) uint32 {
	if n < len(c.PPids) {
		return c.PPids[n]
	}
	return 0
}

// runTogether reports whether at least 80% of a's execs have an exec of b
// by the same parent within PipelineWindow whose process was alive at the
// same time (when both ends are known): `a | b` runs both at once, while
// `a; sleep 2` forks sleep only after a ended.
func runTogether(a, b *Command) bool {
	if a.ParentComm != b.ParentComm || a.Count < 2 || b.Count < 2 {
		return false
	}
	order := byTime(b.Execs)
	n := 0
	for i, e := range a.Execs {
		for _, j := range execsNear(b.Execs, order, e.At) {
			if a.PPids[i] == b.PPids[j] && overlap(a, i, b, j) {
				n++
				break
			}
		}
	}
	return n*5 >= a.Count*4
}

// startedBefore counts the runs in which a's exec came before b's.
func startedBefore(a, b *Command) int {
	order := byTime(b.Execs)
	n := 0
	for _, e := range a.Execs {
		for _, j := range execsNear(b.Execs, order, e.At) {
			if e.At < b.Execs[j].At {
				n++
				break
			}
		}
	}
	return n
}

// byTime returns the indexes of the points in time order (stable).
func byTime(ps Points) []int {
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
	}
	if !slices.IsSortedFunc(ps, func(a, b Point) int { return cmp.Compare(a.At, b.At) }) {
		slices.SortStableFunc(order, func(i, j int) int { return cmp.Compare(ps[i].At, ps[j].At) })
	}
	return order
}

// execsNear returns the indexes, from order (the points' indexes in time
// order), of the points within PipelineWindow of t, in that order.
func execsNear(ps Points, order []int, t time.Duration) []int {
	lo := sort.Search(len(order), func(k int) bool { return ps[order[k]].At >= t-PipelineWindow })
	hi := lo
	for hi < len(order) && ps[order[hi]].At <= t+PipelineWindow {
		hi++
	}
	return order[lo:hi]
}

// ueventWrites counts the opens for writing of a device's uevent file by
// the command's processes.
func (b *builder) ueventWrites(c *Command) int {
	if b.ueventWritesBy == nil { // once: by pid
		b.ueventWritesBy = map[uint32]int{}
		for _, w := range b.run.SysfsWrites {
			if w.What == "uevent" {
				b.ueventWritesBy[w.Pid]++
			}
		}
	}
	pids := make(map[uint32]bool, len(c.Pids))
	n := 0
	for _, p := range c.Pids {
		if !pids[p] {
			pids[p] = true
			n += b.ueventWritesBy[p]
		}
	}
	return n
}

// overlap reports whether the processes of exec i of a and exec j of b
// lived at the same time, from fork to exit; true when either end is
// unknown. A shell forks every member of a pipeline before it waits for
// any, so they overlap even when the first one exits before the next one
// gets to exec; a command after `;` is forked only once they all ended.
func overlap(a *Command, i int, b *Command, j int) bool {
	ea, eb := a.Ends[i], b.Ends[j]
	if ea == 0 || eb == 0 {
		return true
	}
	return a.Forks[i] < eb && b.Forks[j] < ea
}

// nest marks the commands that other commands run: when at least 80% of a
// command's execs have as parent a process of another command, it is part
// of that command (Under), not a command of its own.
func (b *builder) nest() {
	owner := map[uint32]*Command{}
	for _, c := range b.run.Commands {
		for _, p := range c.Pids {
			owner[p] = c
		}
	}
	for _, c := range b.run.Commands {
		votes := map[*Command]int{}
		for _, pp := range c.PPids {
			if o := owner[pp]; o != nil && o != c {
				votes[o]++
			}
		}
		for o, n := range votes {
			if n*5 >= c.Count*4 {
				c.Under = o.Line()
			}
		}
	}
}
