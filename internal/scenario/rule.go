package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/command"
	"github.com/whyslow/whyslow/internal/sysattr"
	"github.com/whyslow/whyslow/internal/udevd"
)

// Values the story's rule writes. Before checking the rule, QueueRule sets
// the queue to VerifyScheduler and VerifyNrRequests, which differ from them.
const (
	RuleScheduler    = "mq-deadline"
	RuleNrRequests   = 64
	VerifyScheduler  = "none"
	VerifyNrRequests = 32
)

// rulesDir is where udevd reads local rules.
const rulesDir = "/etc/udev/rules.d"

// Rule is an installed udev rule.
type Rule struct {
	Path       string // /etc/udev/rules.d/99-whyslow-test-<dev>.rules
	Dev        string // the device it matches, e.g. "loop3"
	Scheduler  string // what it writes to queue/scheduler; "" where the device offers no mq-deadline
	NrRequests int    // what it writes to queue/nr_requests
}

// QueueRule installs the story's udev rule for dev: on every "change"
// uevent of the device, udevd writes queue/scheduler (RuleScheduler) and
// queue/nr_requests (RuleNrRequests). On 6.17+ the scheduler write freezes
// the request queue even when the value does not change. It makes sure
// udevd runs (see Udevd), reloads the rules, and checks that the rule works:
// after setting other values, a change uevent must bring the rule's values
// back. On cleanup the rule is removed, the rules reloaded and udevd's queue
// settled.
func QueueRule(t testing.TB, dev string) Rule {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if err := checkDev(dev); err != nil {
		t.Fatalf("queue rule: %v", err)
	}
	q, err := ReadQueue(dev)
	if err != nil {
		t.Fatalf("queue rule: %v", err)
	}
	Udevd(t)
	r := Rule{
		Path:       filepath.Join(rulesDir, "99-whyslow-test-"+dev+".rules"),
		Dev:        dev,
		Scheduler:  RuleScheduler,
		NrRequests: RuleNrRequests,
	}
	// The scheduler is reset to none first, as two rules fighting over it
	// would: many kernels between the seed's 4.15 and 6.17 (5.10 and 6.1
	// among them) return before the freeze when the written value is the
	// current one, so that a rule writing one value would not freeze there
	// (see ../shared/notes/kernel-lab.md). A device without mq-deadline
	// (5.10's loop) gets its nr_requests changed twice instead.
	writes := fmt.Sprintf(`ATTR{queue/scheduler}="none", ATTR{queue/scheduler}="%s", ATTR{queue/nr_requests}="%d"`, r.Scheduler, r.NrRequests)
	if !q.Offers(RuleScheduler) {
		r.Scheduler = ""
		writes = fmt.Sprintf(`ATTR{queue/nr_requests}="%d", ATTR{queue/nr_requests}="%d"`, 48, r.NrRequests)
	}
	text := fmt.Sprintf("# Installed by a whyslow test (pid %d) and removed after it: the story's rule.\n"+
		"ACTION==\"change\", SUBSYSTEM==\"block\", KERNEL==\"%s\", %s\n", os.Getpid(), dev, writes)
	if err := os.MkdirAll(rulesDir, 0o755); err != nil {
		t.Fatalf("queue rule: %v", err)
	}
	if err := os.WriteFile(r.Path, []byte(text), 0o644); err != nil {
		t.Fatalf("queue rule: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(r.Path); err != nil && !os.IsNotExist(err) {
			t.Errorf("queue rule cleanup: %v", err)
		}
		if _, err := command.Run(30*time.Second, "udevadm", "control", "--reload"); err != nil {
			t.Errorf("queue rule cleanup: %v", err)
		}
		// Let events queued before the removal finish, so nothing rewrites
		// the queue after LoopDevice restores it.
		if err := Settle(); err != nil {
			t.Errorf("queue rule cleanup: %v", err)
		}
	})
	if _, err := command.Run(30*time.Second, "udevadm", "control", "--reload"); err != nil {
		t.Fatalf("queue rule: %v", err)
	}

	verifySched := VerifyScheduler
	if r.Scheduler == "" {
		verifySched = q.Scheduler
	}
	if err := SetQueue(dev, verifySched, VerifyNrRequests); err != nil {
		t.Fatalf("queue rule: preparing %s: %v", dev, err)
	}
	applied := func(d time.Duration) bool {
		if err := Trigger(dev); err != nil {
			t.Fatalf("queue rule: %v", err)
		}
		if err := Settle(); err != nil {
			t.Fatalf("queue rule: %v", err)
		}
		return waitFor(d, func() bool {
			q, err = ReadQueue(dev)
			return err == nil && (r.Scheduler == "" || q.Scheduler == r.Scheduler) && q.NrRequests == r.NrRequests
		})
	}
	ok := applied(5 * time.Second)
	if !ok {
		// The uevent can meet a udevd that another test process (or a
		// selftest's guard) was stopping as this one started: no daemon
		// takes it. Make sure one runs, and send another.
		t.Logf("queue rule: the rule did not apply within 5 s (scheduler %q, nr_requests %d); checking udevd and triggering again", q.Scheduler, q.NrRequests)
		if udevd.Find() == 0 {
			pid, err := startUdevd()
			if err != nil {
				t.Fatalf("queue rule: udevd: %v", err)
			}
			t.Logf("scenario: started systemd-udevd (pid %d)", pid)
		}
		if err := pingUdevd(15 * time.Second); err != nil {
			t.Fatalf("queue rule: %v", err)
		}
		ok = applied(10 * time.Second)
	}
	if !ok {
		t.Fatalf("queue rule: after a change uevent %s has scheduler %q, nr_requests %d (err %v); the rule should set %q, %d",
			dev, q.Scheduler, q.NrRequests, err, r.Scheduler, r.NrRequests)
	}
	return r
}

// devName is a block device name that is safe in a rule and a path.
var devName = regexp.MustCompile(`^[A-Za-z0-9_.+-]+$`)

// checkDev fails unless dev is a plain name of an existing block device.
func checkDev(dev string) error {
	if !devName.MatchString(dev) || dev == "." || dev == ".." {
		return fmt.Errorf("bad block device name %q", dev)
	}
	if _, err := os.Stat(filepath.Join("/sys/block", dev, "queue")); err != nil {
		return fmt.Errorf("block device %q: %w", dev, err)
	}
	return nil
}

// Trigger makes the kernel send a "change" uevent for dev, as
// `echo change > /sys/block/<dev>/uevent` does.
func Trigger(dev string) error {
	return sysattr.Write(filepath.Join("/sys/block", dev, "uevent"), "change")
}

// Settle waits (at most 30 s) until udevd has handled every queued event.
func Settle() error {
	_, err := command.Run(40*time.Second, "udevadm", "settle", "--timeout=30")
	return err
}

// removeStaleRules removes rule files this package installed in test
// processes that no longer exist (killed before their cleanup ran).
func removeStaleRules(t testing.TB) {
	files, _ := filepath.Glob(filepath.Join(rulesDir, "99-whyslow-test-*.rules"))
	removed := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		_, rest, ok := strings.Cut(string(b), "(pid ")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ")")
		pid, err := strconv.Atoi(num)
		if err != nil || alive(pid) {
			continue
		}
		if os.Remove(f) == nil {
			t.Logf("scenario: removed %s left over by dead test process %d", f, pid)
			removed = true
		}
	}
	if removed && udevd.Find() != 0 {
		command.Run(30*time.Second, "udevadm", "control", "--reload")
	}
}
