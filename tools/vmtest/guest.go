package vmtest

import (
	"fmt"
	"strings"
)

// Step is one command the guest runs, with its output kept as
// results/<Name>.log and its exit code as results/<Name>.rc.
type Step struct {
	Name string // a file-name-safe label, e.g. "probes-test"
	Cmd  string // a busybox sh command line
}

// Markers the guest prints on its console and the host looks for.
const (
	markBooted = "VMTEST-BOOTED"
	markBegin  = "VMTEST-STEP-BEGIN"
	markEnd    = "VMTEST-STEP-END"
	markDone   = "VMTEST-DONE"
	// markInsmod, with the module's path, says a module failed to load.
	markInsmod = "VMTEST-INSMOD-FAILED"
)

// ResultsSerial is the virtio serial of the disk the guest writes its
// results to, as a tar archive on the raw device.
const ResultsSerial = "results"

// initScript is the guest's /init: mount the kernel filesystems, load the
// modules in order, run each step, write /results to the results disk and
// power off. Nothing in it may stop before the power-off: a hung guest is
// caught by the host's timeout, a failed step by its exit code.
func initScript(modules []string, env []string, steps []Step) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp
mkdir -p /proc /sys /dev /tmp /run /root /results /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
hostname vmtest
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || echo '%s %s'\n", m, markInsmod, m)
	}
	for _, e := range env {
		fmt.Fprintf(&b, "export %s\n", shellQuoteAssign(e))
	}
	fmt.Fprintf(&b, "echo \"%s $(uname -r)\"\n", markBooted)
	b.WriteString("cd /root\n")
	for _, s := range steps {
		fmt.Fprintf(&b, "echo '%s %s'\n", markBegin, s.Name)
		fmt.Fprintf(&b, "( %s ; echo $? > /results/%s.rc ) 2>&1 | tee /results/%s.log\n", s.Cmd, s.Name, s.Name)
		fmt.Fprintf(&b, "echo \"%s %s $(cat /results/%s.rc)\"\n", markEnd, s.Name, s.Name)
	}
	fmt.Fprintf(&b, `dmesg > /results/dmesg.log
for d in /sys/block/vd*; do
	if [ "$(cat $d/serial 2>/dev/null)" = %s ]; then
		tar -C /results -cf /dev/${d##*/} . && sync && echo "vmtest: results on ${d##*/}"
	fi
done
echo %s
poweroff -f
`, ResultsSerial, markDone)
	return b.String()
}

// shellQuoteAssign quotes the value of a NAME=value assignment for sh.
func shellQuoteAssign(e string) string {
	name, value, _ := strings.Cut(e, "=")
	return name + "='" + strings.ReplaceAll(value, "'", `'\''`) + "'"
}
