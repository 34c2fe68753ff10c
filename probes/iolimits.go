package probes

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// iolimitsProbe reads the I/O limits of cgroups and the iocost
// configuration from cgroupfs: cgroup v1's blkio.throttle.* files and v2's
// io.max (both enforced by blk-throttle, which holds a cgroup's bios
// before block_bio_queue, where no tracepoint sees them), and the v2
// root's io.cost.qos and io.cost.model. It reads each limited cgroup's I/O
// counters at the start, every 500 ms and at the end of the run, so that
// the analysis knows when the cgroup did I/O and the rate its I/O ran at
// against the limit. No BPF.
type iolimitsProbe struct{}

func init() { register(iolimitsProbe{}) }

// maxCgroups bounds the cgroups the probe walks; those beyond it are
// counted as a loss.
const maxCgroups = 20000

// Decl implements Probe.
func (iolimitsProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeIOLimits,
		Mechanisms: []Rung{{Mech: event.MechCgroupfs}},
		Describe:   "cgroup I/O limits (v1 blkio.throttle.*, v2 io.max) and the limited cgroups' I/O counters, iocost's configuration (io.cost.qos, io.cost.model), from cgroupfs",
		Attach:     "cgroupfs (v1 `blkio.throttle.*`, v2 `io.max`, `io.stat`, `io.cost.qos`, `io.cost.model`, `cgroup.procs`)",
		Records:    "each cgroup's limits per device, read at the start; the limited cgroups' I/O counters (at the start and the end; every 500 ms when they changed, with the reading before the change; a device of `io.max` not in `io.stat` yet as zero) and processes (`cgroup.procs`, every 500 ms); iocost's configuration per device",
	}
}

// Start implements Probe: it reads the limits and the counters now.
func (p iolimitsProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	st := event.ProbeStatus{Name: p.Decl().Name}
	procfs, sysfs := cfg.ProcFS, cfg.SysFS
	if procfs == "" {
		procfs = "/proc"
	}
	if sysfs == "" {
		sysfs = "/sys"
	}
	v1, v2, err := ioHierarchies(filepath.Join(procfs, "self", "mountinfo"))
	if err != nil {
		st.Status, st.Reason = event.StatusUnavailable, err.Error()
		return nil, st
	}
	if v1 == "" && v2 == "" {
		st.Status, st.Reason = event.StatusUnavailable, "no cgroup v1 blkio nor cgroup2 hierarchy is mounted"
		return nil, st
	}
	r := &iolimitsRunning{v1: v1, v2: v2, sysfs: sysfs, procfs: procfs, sink: sink, names: map[string]event.Device{}, members: map[memberKey]bool{}, counters: map[counterKey]counterReading{}}
	now, err := event.Now()
	if err != nil {
		st.Status, st.Reason = event.StatusUnavailable, err.Error()
		return nil, st
	}
	r.readLimits(now)
	r.readCounters(now, true)
	r.readIOCost(now)
	r.readMembers(now)
	if len(r.limited) > 0 {
		r.stop = make(chan struct{})
		r.wg.Add(1)
		go r.poll()
	}
	st.Status, st.Mechanism = event.StatusOK, event.MechCgroupfs
	return r, st
}

// memberPoll is how often the limited cgroups' processes are read.
const memberPoll = 500 * time.Millisecond

// poll reads the limited cgroups' processes every memberPoll until Stop.
func (r *iolimitsRunning) poll() {
	defer r.wg.Done()
	tick := time.NewTicker(memberPoll)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
			if now, err := event.Now(); err == nil {
				r.readMembers(now)
				r.readCounters(now, false)
			}
		}
	}
}

// readMembers delivers the processes of each limited cgroup (and of the
// cgroups below it) not seen there before.
func (r *iolimitsRunning) readMembers(now event.Mono) {
	for i, c := range r.limited {
		_ = filepath.WalkDir(c.dir, func(dir string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			for _, l := range r.readLines(filepath.Join(dir, "cgroup.procs")) {
				pid, err := strconv.ParseUint(l, 10, 32)
				if err != nil {
					continue
				}
				k := memberKey{i, uint32(pid)}
				r.mu.Lock()
				seen := r.members[k]
				r.members[k] = true
				r.mu.Unlock()
				if seen {
					continue
				}
				e := event.CgroupMember{Time: now, Cgroup: c.path, V1: c.v1, Pid: uint32(pid)}
				if b, err := os.ReadFile(filepath.Join(r.procfs, l, "comm")); err == nil {
					e.Comm = strings.TrimSpace(string(b))
				}
				r.sink.Event(e)
			}
			return nil
		})
	}
}

// counterKey is a limited cgroup (its index in limited) on a device.
type counterKey struct {
	cgroup int
	dev    string
}

// memberKey is a process in a limited cgroup (its index in limited).
type memberKey struct {
	cgroup int
	pid    uint32
}

type iolimitsRunning struct {
	v1, v2        string // the mount points of the blkio (v1) and unified (v2) hierarchies, "" when absent
	sysfs, procfs string
	sink          Sink
	stop          chan struct{} // ends poll
	wg            sync.WaitGroup

	mu       sync.Mutex
	names    map[string]event.Device       // MAJ:MIN -> the device
	limited  []limitedCgroup               // the cgroups with a limit, whose counters are read
	skipped  uint64                        // cgroups not walked (beyond maxCgroups)
	unread   uint64                        // limit or counter files that could not be read
	members  map[memberKey]bool            // the processes seen in the limited cgroups
	counters map[counterKey]counterReading // the last counters read
}

// counterReading is the last reading of a limited cgroup's counters on a
// device (with the time it was taken), and whether it was delivered.
type counterReading struct {
	io   event.CgroupIO
	sent bool
}

// limitedCgroup is a cgroup with a limit: its directory and path, and
// (v2) the devices ("maj:min") its io.max limits.
type limitedCgroup struct {
	dir, path string
	v1        bool
	devs      []string
}

// Stop implements Running: it reads the limited cgroups' processes and
// counters again.
func (r *iolimitsRunning) Stop() error {
	if r.stop != nil {
		close(r.stop)
		r.wg.Wait()
	}
	now, err := event.Now()
	if err != nil {
		return err
	}
	r.readMembers(now)
	r.readCounters(now, true)
	if r.skipped > 0 {
		r.sink.Loss(event.Loss{Probe: event.ProbeIOLimits, What: fmt.Sprintf("cgroups not read (more than %d)", maxCgroups), Count: r.skipped})
	}
	if r.unread > 0 {
		r.sink.Loss(event.Loss{Probe: event.ProbeIOLimits, What: "cgroup files not readable", Count: r.unread})
	}
	return nil
}

// v1LimitFiles are cgroup v1's blk-throttle limit files and the io.max key
// each one is.
var v1LimitFiles = []struct{ file, key string }{
	{"blkio.throttle.read_bps_device", "rbps"},
	{"blkio.throttle.write_bps_device", "wbps"},
	{"blkio.throttle.read_iops_device", "riops"},
	{"blkio.throttle.write_iops_device", "wiops"},
}

// readLimits walks both hierarchies for cgroups with limits and delivers
// each limit.
func (r *iolimitsRunning) readLimits(now event.Mono) {
	walked := 0
	walk := func(root string, v1 bool) {
		_ = filepath.WalkDir(root, func(dir string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if walked++; walked > maxCgroups {
				r.skipped++
				return nil
			}
			path := "/" + strings.TrimPrefix(strings.TrimPrefix(dir, root), "/")
			var limits []event.IOLimit
			if v1 {
				for _, f := range v1LimitFiles {
					for _, l := range r.readLines(filepath.Join(dir, f.file)) {
						id, v, ok := strings.Cut(l, " ")
						n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
						if !ok || err != nil {
							continue
						}
						limits = append(limits, event.IOLimit{Time: now, Cgroup: path, V1: true, Dev: r.dev(id), Limit: f.key, Value: n})
					}
				}
			} else if path != "/" { // the root has no io.max
				for _, l := range r.readLines(filepath.Join(dir, "io.max")) {
					id, kvs, ok := strings.Cut(l, " ")
					if !ok {
						continue
					}
					for _, kv := range strings.Fields(kvs) {
						k, v, _ := strings.Cut(kv, "=")
						n, err := strconv.ParseUint(v, 10, 64)
						if err != nil || !slices.ContainsFunc(v1LimitFiles, func(f struct{ file, key string }) bool { return f.key == k }) {
							continue // "max", or a key of a newer kernel
						}
						limits = append(limits, event.IOLimit{Time: now, Cgroup: path, Dev: r.dev(id), Limit: k, Value: n})
					}
				}
			}
			if len(limits) > 0 {
				var devs []string
				for _, l := range limits {
					if id := fmt.Sprintf("%d:%d", l.Dev.Major, l.Dev.Minor); !v1 && !slices.Contains(devs, id) {
						devs = append(devs, id)
					}
				}
				r.limited = append(r.limited, limitedCgroup{dir: dir, path: path, v1: v1, devs: devs})
				for _, l := range limits {
					r.sink.Event(l)
				}
			}
			return nil
		})
	}
	if r.v1 != "" {
		walk(r.v1, true)
	}
	if r.v2 != "" {
		walk(r.v2, false)
	}
}

// readCounters delivers the I/O counters of every limited cgroup on every
// device they list: all of them at the ends of the run, those that changed
// since the last reading in between, each change after the previous
// reading too when that one was not delivered (the last reading before
// the cgroup's I/O grew, at the time it was taken: so that the analysis
// knows when the cgroup did its I/O, within a reading, and its rate then;
// not from the run's start for a cgroup idle until the middle of it).
// A device of a v2 cgroup's io.max that its io.stat does not list yet
// reads as zero I/O: io.stat lists a device once the cgroup got I/O
// through to it, and a read its limit holds from the first byte leaves
// none.
func (r *iolimitsRunning) readCounters(now event.Mono, all bool) {
	for ci, c := range r.limited {
		byDev := map[string]*event.CgroupIO{}
		get := func(id string) *event.CgroupIO {
			if e := byDev[id]; e != nil {
				return e
			}
			e := &event.CgroupIO{Time: now, Cgroup: c.path, V1: c.v1, Dev: r.dev(id)}
			byDev[id] = e
			return e
		}
		if c.v1 {
			// "7:3 Write 802" lines, and a "Total" line at the end.
			for _, f := range []string{"blkio.throttle.io_serviced", "blkio.throttle.io_service_bytes"} {
				for _, l := range r.readLines(filepath.Join(c.dir, f)) {
					fields := strings.Fields(l)
					if len(fields) != 3 || !strings.Contains(fields[0], ":") {
						continue
					}
					n, err := strconv.ParseUint(fields[2], 10, 64)
					if err != nil {
						continue
					}
					e := get(fields[0])
					switch {
					case fields[1] == "Read" && f == "blkio.throttle.io_serviced":
						e.Reads = n
					case fields[1] == "Write" && f == "blkio.throttle.io_serviced":
						e.Writes = n
					case fields[1] == "Read":
						e.ReadBytes = n
					case fields[1] == "Write":
						e.WriteBytes = n
					}
				}
			}
		} else {
			// "8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0 ..."
			for _, l := range r.readLines(filepath.Join(c.dir, "io.stat")) {
				id, kvs, ok := strings.Cut(l, " ")
				if !ok {
					continue
				}
				e := get(id)
				for _, kv := range strings.Fields(kvs) {
					k, v, _ := strings.Cut(kv, "=")
					n, err := strconv.ParseUint(v, 10, 64)
					if err != nil {
						continue
					}
					switch k {
					case "rios":
						e.Reads = n
					case "wios":
						e.Writes = n
					case "rbytes":
						e.ReadBytes = n
					case "wbytes":
						e.WriteBytes = n
					}
				}
			}
			if _, err := os.Stat(filepath.Join(c.dir, "io.stat")); err == nil {
				for _, id := range c.devs {
					get(id)
				}
			}
		}
		ids := make([]string, 0, len(byDev))
		for id := range byDev {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			e := *byDev[id]
			k := counterKey{ci, id}
			r.mu.Lock()
			prev, ok := r.counters[k]
			changed := !ok || prev.io.Reads != e.Reads || prev.io.Writes != e.Writes || prev.io.ReadBytes != e.ReadBytes || prev.io.WriteBytes != e.WriteBytes
			r.counters[k] = counterReading{io: e, sent: all || changed}
			r.mu.Unlock()
			if ok && changed && !prev.sent {
				r.sink.Event(prev.io)
			}
			if all || changed {
				r.sink.Event(e)
			}
		}
	}
}

// readIOCost delivers iocost's configuration of every device where it is
// enabled (enable=1 in the v2 root's io.cost.qos).
func (r *iolimitsRunning) readIOCost(now event.Mono) {
	if r.v2 == "" {
		return
	}
	qos := filepath.Join(r.v2, "io.cost.qos")
	if _, err := os.Stat(qos); err != nil {
		return // no iocost in this kernel, or the io controller is bound to v1
	}
	models := map[string]string{}
	for _, l := range r.readLines(filepath.Join(r.v2, "io.cost.model")) {
		if id, rest, ok := strings.Cut(l, " "); ok {
			models[id] = rest
		}
	}
	for _, l := range r.readLines(qos) {
		id, rest, ok := strings.Cut(l, " ")
		if !ok || !slices.Contains(strings.Fields(rest), "enable=1") {
			continue
		}
		r.sink.Event(event.IOCost{Time: now, Dev: r.dev(id), QoS: rest, Model: models[id]})
	}
}

// readLines returns the non-empty lines of a cgroup file; a file that
// exists and cannot be read is counted.
func (r *iolimitsRunning) readLines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.unread++
		}
		return nil
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// dev names the device of a MAJ:MIN from sysfs (/sys/dev/block/MAJ:MIN).
func (r *iolimitsRunning) dev(id string) event.Device {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d, ok := r.names[id]; ok {
		return d
	}
	var d event.Device
	maj, min, _ := strings.Cut(id, ":")
	if a, err := strconv.ParseUint(maj, 10, 32); err == nil {
		d.Major = uint32(a)
	}
	if b, err := strconv.ParseUint(min, 10, 32); err == nil {
		d.Minor = uint32(b)
	}
	if target, err := os.Readlink(filepath.Join(r.sysfs, "dev", "block", id)); err == nil {
		d.Name = filepath.Base(target)
	}
	r.names[id] = d
	return d
}

// ioHierarchies finds, in a mountinfo file, the mount points of the cgroup
// v1 hierarchy that holds the blkio controller and of the unified (v2)
// hierarchy; "" for one that is not mounted.
func ioHierarchies(mountinfo string) (v1, v2 string, err error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", "", fmt.Errorf("reading the mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+3 >= len(fields) || fields[3] != "/" {
			continue // not the hierarchy's root (a bind mount of a cgroup)
		}
		switch fields[sep+1] {
		case "cgroup":
			if v1 == "" && slices.Contains(strings.Split(fields[sep+3], ","), "blkio") {
				v1 = unescapeMount(fields[4])
			}
		case "cgroup2":
			if v2 == "" {
				v2 = unescapeMount(fields[4])
			}
		}
	}
	return v1, v2, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
