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
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	for i := range cmds {
		for j := i + 1; j < len(cmds); j++ {
			if runTogether(cmds[i], cmds[j]) && runTogether(cmds[j], cmds[i]) {
				parent[find(j)] = find(i)
			}
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
	pids := make(map[uint32]bool, len(c.Pids))
	for _, p := range c.Pids {
		pids[p] = true
	}
	n := 0
	for _, w := range b.run.SysfsWrites {
		if w.What == "uevent" && pids[w.Pid] {
			n++
		}
	}
	return n
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
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
