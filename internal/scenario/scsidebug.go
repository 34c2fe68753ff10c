package scenario

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/sysattr"
)

// scsiDebugDriver is the scsi_debug driver's directory of runtime knobs.
const scsiDebugDriver = "/sys/bus/pseudo/drivers/scsi_debug"

// ScsiDebugDisk returns the disk scsi_debug made ("sda"), with its faults
// off. It skips (fails in the kernel matrix, which loads scsi_debug and
// sd_mod at boot) when there is none. The cleanup turns the faults off and
// puts the disk's timeout back.
func ScsiDebugDisk(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if _, err := os.Stat(scsiDebugDriver); err != nil {
		Skip(t, "no scsi_debug driver (modprobe scsi_debug)")
	}
	disks, _ := filepath.Glob("/sys/block/sd*")
	dev := ""
	for _, d := range disks {
		if b, err := os.ReadFile(filepath.Join(d, "device", "model")); err == nil && strings.TrimSpace(string(b)) == "scsi_debug" {
			dev = filepath.Base(d)
			break
		}
	}
	if dev == "" {
		Skip(t, "scsi_debug made no disk")
	}
	timeout := filepath.Join("/sys/block", dev, "device", "timeout")
	orig, err := os.ReadFile(timeout)
	if err != nil {
		t.Fatalf("scsi_debug: %v", err)
	}
	ScsiDebugFaults(t, 0, 0)
	t.Cleanup(func() {
		ScsiDebugFaults(t, 0, 0)
		if err := sysattr.Write(timeout, strings.TrimSpace(string(orig))); err != nil {
			t.Errorf("scsi_debug cleanup: %v", err)
		}
	})
	return dev
}

// ScsiDebugFaults sets scsi_debug's opts (2: medium errors at its error
// sectors, 4: every every_nth-th command is dropped, so that it times
// out) and every_nth.
func ScsiDebugFaults(t testing.TB, opts, everyNth int) {
	t.Helper()
	for _, kv := range [][2]string{{"every_nth", itoa(everyNth)}, {"opts", itoa(opts)}} {
		if err := sysattr.Write(filepath.Join(scsiDebugDriver, kv[0]), kv[1]); err != nil {
			t.Fatalf("scsi_debug: %v", err)
		}
	}
}

// ScsiDebugTimeout sets the disk's command timeout, in seconds.
func ScsiDebugTimeout(t testing.TB, dev string, seconds int) {
	t.Helper()
	if err := sysattr.Write(filepath.Join("/sys/block", dev, "device", "timeout"), itoa(seconds)); err != nil {
		t.Fatalf("scsi_debug: %v", err)
	}
}

// ScsiDebugMediumErrorOffset is a byte offset whose 4 KiB block holds a
// sector scsi_debug fails with a medium error under opts 2 (its default
// medium_error_start, 0x1234).
const ScsiDebugMediumErrorOffset = 0x1234 * 512 / 4096 * 4096

func itoa(n int) string { return strconv.Itoa(n) }
