package trouble

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CgroupDir resolves --cgroup: a cgroup v2 directory (its path, e.g.
// /sys/fs/cgroup/db.slice), or a path in the cgroup v2 hierarchy as
// /proc/PID/cgroup gives it ("/db.slice", looked up under each cgroup2
// mount of procfs/self/mounts). The directory must have io.pressure (PSI
// per cgroup): a cgroup v1 directory has none. The error names the flag
// and what is wrong.
func CgroupDir(procfs, arg string) (string, error) {
	if arg == "" || strings.ContainsRune(arg, 0) {
		return "", fmt.Errorf("--cgroup %q: want a cgroup v2 directory (/sys/fs/cgroup/NAME) or a path in the cgroup v2 hierarchy (/NAME)", arg)
	}
	mounts, merr := cgroup2Mounts(procfs)
	var cands []string
	if filepath.IsAbs(arg) {
		cands = append(cands, filepath.Clean(arg))
	}
	for _, m := range mounts {
		// Join cleans the path: a ".." stays in the mount.
		if c := filepath.Join(m, filepath.Join("/", arg)); !slices.Contains(cands, c) {
			cands = append(cands, c)
		}
	}
	var dirNoPSI string
	for _, c := range cands {
		st, err := os.Stat(c)
		if err != nil || !st.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(c, "io.pressure")); err == nil {
			return c, nil
		}
		if dirNoPSI == "" {
			dirNoPSI = c
		}
	}
	switch {
	case dirNoPSI != "":
		return "", fmt.Errorf("--cgroup %q: %s has no io.pressure: not a cgroup v2 directory (a v1 hierarchy?), or a kernel without PSI (CONFIG_PSI, psi=1)", arg, dirNoPSI)
	case merr != nil:
		return "", fmt.Errorf("--cgroup %q: no such directory, and the cgroup v2 mounts could not be read: %v", arg, merr)
	case len(mounts) == 0:
		return "", fmt.Errorf("--cgroup %q: no such directory, and no cgroup v2 hierarchy is mounted (%s)", arg, filepath.Join(procfs, "self", "mounts"))
	}
	return "", fmt.Errorf("--cgroup %q: no such cgroup in the cgroup v2 hierarchy (mounted at %s)", arg, strings.Join(mounts, ", "))
}

// cgroup2Mounts lists the mount points of cgroup2 in procfs/self/mounts.
func cgroup2Mounts(procfs string) ([]string, error) {
	f, err := os.Open(filepath.Join(procfs, "self", "mounts"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			out = append(out, unescapeMount(fields[1]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for a
// space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
