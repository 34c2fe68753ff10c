package probes

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
)

// stackingDrivers are the drivers that stack block devices on others (a
// device whose submissions resubmit to lower devices from inside its own:
// the nested calls the submitfn probe times on their own device), each
// with the sysfs path that is there while it is loaded. Their devices can
// appear at any time, and do I/O (the partition scan) before their add
// uevent: while one is loaded the per-bio programs stay attached.
var stackingDrivers = []struct{ name, path string }{
	{"bcache", "fs/bcache"},
	{"dm_mod", "module/dm_mod"},
	{"md_mod", "module/md_mod"},
	{"drbd", "module/drbd"},
}

// stackingPresent tells why a stacked device exists or can appear on the
// machine whose sysfs is at sysfs, or "" when none can: a stacking driver
// is loaded, or a disk is bio-based (no blk-mq `mq` directory: its driver's
// own submit_bio runs, and may resubmit to other devices, as nvme
// multipath heads do). A disk that cannot be read counts as bio-based.
func stackingPresent(sysfs string) string {
	if why := stackingDriver(sysfs); why != "" {
		return why
	}
	return bioBasedDisk(sysfs)
}

// stackingDriver tells which stacking driver is loaded, or "".
func stackingDriver(sysfs string) string {
	for _, d := range stackingDrivers {
		if _, err := os.Stat(filepath.Join(sysfs, d.path)); err == nil {
			return "driver " + d.name + " loaded"
		}
	}
	return ""
}

// bioBasedDisk names a bio-based disk (or one it cannot read), or "".
func bioBasedDisk(sysfs string) string {
	disks, err := os.ReadDir(filepath.Join(sysfs, "block"))
	if err != nil {
		return "no list of block devices (" + err.Error() + ")"
	}
	for _, d := range disks {
		_, err := os.Stat(filepath.Join(sysfs, "block", d.Name(), "mq"))
		if err == nil {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			return "bio-based device " + d.Name()
		}
		return "device " + d.Name() + " unreadable (" + err.Error() + ")"
	}
	return ""
}

// nestedCheckEvery is how often a run looks for stacked devices (and
// detaches the per-bio programs when the last one has gone).
const nestedCheckEvery = time.Second

// nestedGrace is how long a nested call seen with the per-bio programs off
// keeps them on when no check finds a reason (a stacked device that went
// again, or one no check can see).
const nestedGrace = 10 * time.Second

// nestedSwitch is a submitfn run whose per-bio programs (bio: they time
// nested calls on their own device, and run on every bio) are attached
// only while stackingPresent finds a reason, or for nestedGrace after a
// nested call seen without them (the BPF programs send a notice on need:
// a stacked device made before a check finds it). The nested bios of a
// call made while they were off are counted (SF_LOSS_NESTED).
type nestedSwitch struct {
	*directRun
	sysfs   string
	bioFn   string
	bio     []attachPoint
	need    <-chan struct{}
	quit    chan struct{}
	done    chan struct{}
	stacked func(sysfs string) string // submitFnStacked

	mu       sync.Mutex
	links    []link.Link
	atStart  string    // why they were attached at start, or ""
	noticed  time.Time // when a nested call came with them off
	attaches int       // times attached during the run, after the start
	failed   string    // the last attach error, if any
	stopOnce sync.Once
}

// submitFnStacked is how a submitfn run finds stacked devices; a test
// replaces it to see one appear during a run where the driver is loaded.
var submitFnStacked = stackingPresent

func newNestedSwitch(r *directRun, sysfs, bioFn string, bio []attachPoint, need <-chan struct{}) (*nestedSwitch, error) {
	s := &nestedSwitch{directRun: r, sysfs: sysfs, bioFn: bioFn, bio: bio, need: need,
		quit: make(chan struct{}), done: make(chan struct{}), stacked: submitFnStacked}
	stacked := s.stacked
	if why := stacked(sysfs); why != "" {
		if err := s.attach(); err != nil {
			r.Stop()
			return nil, err
		}
		s.atStart = why
	}
	r.closeMore = s.detachAll
	go s.watch()
	return s, nil
}

// watch attaches the per-bio programs when they become needed and
// detaches them when no reason is left, until Stop.
func (s *nestedSwitch) watch() {
	defer close(s.done)
	tick := time.NewTicker(nestedCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-s.need:
			s.mu.Lock()
			s.noticed = time.Now()
			s.mu.Unlock()
		case <-tick.C:
		}
		s.reconcile()
	}
}

func (s *nestedSwitch) reconcile() {
	why := s.stacked(s.sysfs)
	s.mu.Lock()
	defer s.mu.Unlock()
	want := why != "" || (!s.noticed.IsZero() && time.Since(s.noticed) < nestedGrace)
	switch {
	case want && s.links == nil:
		if err := s.attachLocked(); err != nil {
			s.failed = err.Error()
			return
		}
		s.attaches++
	case !want && s.links != nil:
		s.detachLocked()
	}
}

func (s *nestedSwitch) attach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attachLocked()
}

// attachLocked attaches the per-bio programs, then tells them they run.
func (s *nestedSwitch) attachLocked() error {
	links, err := attachLater(s.coll, s.bio)
	if err != nil {
		return err
	}
	s.links = links
	return s.setCtl(1)
}

// detachLocked tells the programs the per-bio ones are off (so that a
// nested call sends a notice again), then detaches them.
func (s *nestedSwitch) detachLocked() {
	_ = s.setCtl(0)
	closeAll(s.links)
	s.links = nil
}

func (s *nestedSwitch) setCtl(on uint32) error {
	m := s.coll.Maps["bio_prog_on"]
	if err := m.Update(uint32(submitfnSfCtlSF_CTL_ON), on, 0); err != nil {
		return err
	}
	if on == 0 {
		return m.Update(uint32(submitfnSfCtlSF_CTL_NOTICED), uint32(0), 0)
	}
	return nil
}

// detachAll stops the watcher and detaches the per-bio programs: the run
// calls it as it stops, after its own links are closed.
func (s *nestedSwitch) detachAll() {
	s.stopOnce.Do(func() {
		close(s.quit)
		<-s.done
		s.mu.Lock()
		closeAll(s.links)
		s.links = nil
		s.mu.Unlock()
	})
}

// statusNote says which programs run: the submission function's, and the
// per-bio ones when (and why) they are attached.
func (s *nestedSwitch) statusNote() string {
	fns := strings.Join(s.funcs, ", ")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.atStart != "" {
		return "on " + fns + " and " + s.bioFn + " (nested submissions of stacked devices; attached while a stacked device can exist: " + s.atStart + ")"
	}
	return "on " + fns + "; " + s.bioFn + " (nested submissions of stacked devices) not attached: no stacked device, no stacking driver loaded " +
		"(it is attached when one appears or a nested submission is seen; nested bios before that are counted as lost)"
}

// bioAttached tells whether the per-bio programs are attached now.
func (s *nestedSwitch) bioAttached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links != nil
}
