package trouble

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// parsePSI returns the "some" and "full" totals of a /proc/pressure file:
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=12345
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=6789
//
// (microseconds). A file without a "full" line (cpu on old kernels) has
// full 0.
func parsePSI(text string) (some, full time.Duration, err error) {
	seen := false
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var total string
		for _, kv := range f[1:] {
			if v, ok := strings.CutPrefix(kv, "total="); ok {
				total = v
			}
		}
		if total == "" {
			return 0, 0, fmt.Errorf("no total in %q", line)
		}
		us, err := strconv.ParseUint(total, 10, 63)
		if err != nil {
			return 0, 0, fmt.Errorf("bad total in %q: %v", line, err)
		}
		switch f[0] {
		case "some":
			some, seen = time.Duration(us)*time.Microsecond, true
		case "full":
			full = time.Duration(us) * time.Microsecond
		}
	}
	if !seen {
		return 0, 0, errors.New("no \"some\" line")
	}
	return some, full, nil
}

// readPSIFile reads the totals of a pressure file: /proc/pressure/<res>,
// or a cgroup v2 directory's <res>.pressure.
func readPSIFile(p string) (some, full time.Duration, err error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, 0, err
	}
	some, full, err = parsePSI(string(b))
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %v", p, err)
	}
	return some, full, nil
}

// psiTrigger opens pressure file p (/proc/pressure/<res>, or a cgroup v2
// directory's <res>.pressure, which takes the same triggers) and registers a trigger of a
// "some" stall of stall within window (Documentation/accounting/psi.rst):
// the file then polls POLLPRI each time the threshold is crossed, at most
// once a window. The trigger lives as long as the file is open.
//
// Without CAP_SYS_RESOURCE the kernel takes only "unprivileged" triggers,
// whose window is a multiple of 2 s (others are EINVAL), and checks them
// from its 2 s averaging work instead of its real-time one: then the
// trigger is set again with a 2 s window and the stall scaled with it,
// and note says so. set is the trigger set, "5ms in 1s", setStall its stall.
func psiTrigger(p string, stall, window time.Duration) (f *os.File, set string, setStall time.Duration, note string, err error) {
	f, err = os.OpenFile(p, os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", 0, "", psiReason(p, err)
	}
	trig := fmt.Sprintf("some %d %d\x00", stall.Microseconds(), window.Microseconds())
	_, err = f.Write([]byte(trig))
	if errors.Is(err, unix.EINVAL) && window%(2*time.Second) != 0 {
		w2 := (window/(2*time.Second) + 1) * 2 * time.Second
		s2 := time.Duration(float64(stall) * float64(w2) / float64(window))
		f.Close()
		if f, err = os.OpenFile(p, os.O_RDWR|unix.O_NONBLOCK, 0); err != nil {
			return nil, "", 0, "", psiReason(p, err)
		}
		trig2 := fmt.Sprintf("some %d %d\x00", s2.Microseconds(), w2.Microseconds())
		if _, err2 := f.Write([]byte(trig2)); err2 == nil {
			return f, fmt.Sprintf("%v in %v", s2, w2), s2, fmt.Sprintf("without CAP_SYS_RESOURCE the kernel refuses a %v window: unprivileged trigger, %v within %v, checked every 2 s", window, s2, w2), nil
		}
	}
	if err != nil {
		f.Close()
		return nil, "", 0, "", fmt.Errorf("%s: trigger %q refused: %v", p, strings.TrimSuffix(trig, "\x00"), psiWriteReason(err))
	}
	return f, fmt.Sprintf("%v in %v", stall, window), stall, "", nil
}

// psiReason says why a pressure file cannot be opened.
func psiReason(p string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: no such file (kernel without CONFIG_PSI, or booted with psi=0)", p)
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: PSI is disabled (booted with psi=0, or CONFIG_PSI_DEFAULT_DISABLED without psi=1)", p)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: not allowed to open it for writing (triggers need write access)", p)
	}
	return fmt.Errorf("%s: %v", p, err)
}

// psiWriteReason explains the errors the kernel gives a trigger write.
func psiWriteReason(err error) string {
	switch {
	case errors.Is(err, unix.EPERM):
		return "not permitted (unprivileged triggers need a window that is a multiple of 2 s)"
	case errors.Is(err, unix.EOPNOTSUPP):
		return "PSI is disabled (psi=0)"
	case errors.Is(err, unix.EBUSY):
		return "a trigger is already set on this file"
	case errors.Is(err, unix.EINVAL):
		return "invalid trigger (window 500 ms-10 s, stall within the window)"
	}
	return err.Error()
}
