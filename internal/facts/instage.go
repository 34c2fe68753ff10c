package facts

import (
	"cmp"
	"fmt"
	"slices"
)

// InStage returns the processes on the device that spent time in a stage
// (stage.IOCost, ...), the most time in it first.
func (d *Device) InStage(name string) []*Process {
	if d == nil {
		return nil
	}
	var out []*Process
	for _, p := range d.Processes {
		if p.Stage(name) > 0 {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, c *Process) int { return cmp.Compare(c.Stage(name), a.Stage(name)) })
	return out
}

// StageMs is the time the device's processes spent in a stage, in
// milliseconds.
func (d *Device) StageMs(name string) float64 {
	var ms float64
	for _, p := range d.InStage(name) {
		ms += msOf(p.Stage(name))
	}
	return ms
}

// StageTasks returns the processes on the device that spent time in a
// stage, as tasks (pid = tgid) with the cgroup their I/O is charged to
// when known, the most time first.
func (d *Device) StageTasks(name string) Tasks {
	return Processes(d.InStage(name)).Tasks()
}

// StageDelayed returns the processes on the device that spent time in a
// stage with that time, the most first: "fio (pid 123): 4700 ms".
func (d *Device) StageDelayed(name string) []string {
	var out []string
	for _, p := range d.InStage(name) {
		out = append(out, fmt.Sprintf("%s (pid %d): %.0f ms", p.Comm, p.Pid, msOf(p.Stage(name))))
	}
	return out
}
