package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// queueEnterFuncs are the kernel functions a submitter sleeps in while the
// request queue is frozen: __bio_queue_enter (5.16+), blk_queue_enter
// (before, and for passthrough requests).
var queueEnterFuncs = []string{"__bio_queue_enter", "blk_queue_enter"}

// Stacks counts kernel stacks of one process's threads sampled through
// /proc/<pid>/task/<tid>/stack: ground truth for where they waited.
type Stacks struct {
	Samples    int            // thread stacks read
	QueueEnter int            // of those, blocked entering a frozen queue
	Top        map[string]int // samples per innermost function
}

// String summarises the samples on one line.
func (s Stacks) String() string {
	return fmt.Sprintf("%d of %d stack samples in queue enter", s.QueueEnter, s.Samples)
}

// SampleStacks reads the kernel stack of every thread of pid every interval
// until d has passed or the process is gone. Needs root.
func SampleStacks(pid int, d, every time.Duration) Stacks {
	s := Stacks{Top: map[string]int{}}
	deadline := time.Now().Add(d)
	taskDir := fmt.Sprintf("/proc/%d/task", pid)
	for time.Now().Before(deadline) {
		tasks, err := os.ReadDir(taskDir)
		if err != nil || !alive(pid) {
			break
		}
		for _, task := range tasks {
			b, err := os.ReadFile(filepath.Join(taskDir, task.Name(), "stack"))
			if err != nil {
				continue // the thread exited
			}
			s.Samples++
			funcs := stackFuncs(string(b))
			if len(funcs) > 0 {
				s.Top[funcs[0]]++
			}
			if containsAny(funcs, queueEnterFuncs) {
				s.QueueEnter++
			}
		}
		time.Sleep(every)
	}
	return s
}

// stackFuncs returns the function names of a /proc/<pid>/stack dump,
// innermost first: "[<0>] __bio_queue_enter+0x14e/0x260" -> "__bio_queue_enter".
func stackFuncs(dump string) []string {
	var funcs []string
	for _, line := range strings.Split(dump, "\n") {
		_, fn, ok := strings.Cut(line, "] ")
		if !ok {
			continue
		}
		fn, _, _ = strings.Cut(fn, "+")
		fn, _, _ = strings.Cut(fn, " ")
		if fn != "" {
			funcs = append(funcs, fn)
		}
	}
	return funcs
}

func containsAny(have, want []string) bool {
	for _, h := range have {
		for _, w := range want {
			if h == w {
				return true
			}
		}
	}
	return false
}
