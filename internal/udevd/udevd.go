// Package udevd finds the running udev daemon, for the scenario helpers of
// the tests and `whyslow selftest`, which use the one running before they
// start their own.
package udevd

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Find returns the pid of the main udev daemon (systemd-udevd, or udevd of
// eudev and older systemd), or 0. Its workers, its children (named
// "(udev-worker)" since systemd 250, after the daemon before), and zombies
// are passed over.
func Find() int {
	return find("/proc")
}

func find(proc string) int {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, parent, state := stat(proc, pid)
		if !isDaemon(name) || state == 'Z' || state == 'X' {
			continue
		}
		if pname, _, _ := stat(proc, parent); parent > 0 && isDaemon(pname) {
			continue // a worker of an older udevd
		}
		return pid
	}
	return 0
}

func isDaemon(comm string) bool { return comm == "systemd-udevd" || comm == "udevd" }

// stat returns the comm, parent pid and state of pid from <proc>/<pid>/stat,
// or zero values.
func stat(proc string, pid int) (comm string, ppid int, state byte) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", proc, pid))
	if err != nil {
		return "", 0, 0
	}
	// comm is between the first "(" and the last ")": it may hold both
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i {
		return "", 0, 0
	}
	f := strings.Fields(s[j+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return "", 0, 0
	}
	ppid, _ = strconv.Atoi(f[1])
	return s[i+1 : j], ppid, f[0][0]
}
