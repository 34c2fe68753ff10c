package probes

// The kernel's own count of each device's completed I/Os, against the
// completions whyslow's programs saw there: a cross-check that costs
// nothing per I/O, so that no completion is lost silently.
//
// On 6.18 the kernel runs none of the BPF programs attached to
// block_rq_complete for a few of its hits (2 to 5 in 100 000 under fio on
// a loop device and on vda), with no recursion miss counted: perf's
// counting probe on the same tracepoint and the disk's statistics count
// them, and every BPF program there (whyslow's chain, a no-op tp_btf and
// a no-op raw_tp attached on their own) misses the same ones (BENCHMARKS.md,
// issue 16, wt-c28). The service and submit probes count such completions
// when a request or a bio of the same address comes again; this counts
// them all, per device, from the disk's statistics.
//
// The kernel counts a request's completion in /sys/block/<disk>/stat
// (Documentation/block/stat.rst: read, write, discard and flush I/Os
// completed) where it accounts I/O (blk_account_io_done, queue/iostats on),
// right after tracing block_rq_complete; a flush the block layer completes
// itself, never issued to the driver, is counted (as a flush on 6.18) and
// traced. The service probe sees every completion of a request-based
// device (a blk-mq queue: /sys/block/<disk>/mq) that reaches its program:
// those that end a span (its histogram's count) and those that end none
// (bpf/service.bpf.c's `unspanned`: requests never issued, such as
// flushes the block layer completes itself), each once. A request issued
// before the probe started ends no span and is not counted there (nor is
// the second completion a write in a flush sequence is traced with, which
// the kernel counts once): those in flight when the kernel's count is
// first read are allowed for (its in_flight field), which also forgives
// as many real misses, once per run. So, over the run, the kernel's
// completions beyond the program's and that allowance are completions no
// program saw. Both counts are of the whole disk (its partitions' I/O included).
// What the kernel counts and the programs do not trace is never a
// shortfall: passthrough requests and queues with iostats off make the
// kernel's count smaller, never larger. Bio-based devices (zram, dm, md,
// bcache, nvme multipath heads: no mq/) are not compared: they complete
// bios, not requests, so block_rq_complete never fires for them and there
// is no program count to hold their stat against (their I/O is seen, per
// bio, by the submit probe, and their requests, if any, on the disks
// under them, which are compared). The stat is read after the programs
// are attached and before they are detached, so the edges only add to
// what the programs saw.
//
// A disk that appears during the run (a loop device set up, a disk
// plugged in) is compared from its first sighting: /sys/block is listed
// every diskWatchEvery, and a new request-based disk's baseline is what
// the programs had seen on it, read just before its stat: completions
// between the two reads count as seen (a few, forgiven), none that
// completed unseen is hidden. Its loss line says that its count starts
// there. A disk that comes and goes between two listings is not compared;
// nor is one whose counts go down (removed and made again under the same
// number).

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/diskstat"
	"github.com/whyslow/whyslow/internal/event"
)

// diskCount is one request-based disk's completed I/Os, as the kernel
// counted them.
type diskCount struct {
	name     string
	ios      uint64 // reads + writes + discards + flushes completed
	inflight uint64 // requests in flight
	// seen is what the programs had seen on the disk: for a baseline
	// taken mid-run (late), read just before the count; 0 for the disks
	// there at the start; for a count to compare (readDiskCounts), read
	// just after it.
	seen uint64
	late bool
}

// readDiskCounts returns the completed I/Os of every request-based disk
// under sysfs's block class, by kernel dev_t (major<<20|minor), each with
// what the programs had seen on it (seenOn) read right after its stat: the
// kernel counts a completion after its tracepoint ran the programs, so
// every completion in the stat is in that seen, and only those of the few
// microseconds between the two reads are seen beyond it. Reading the seen
// side later (after detaching the programs, say) would count as seen every
// completion meanwhile: under load, thousands, as many real misses hidden.
// A disk whose files or seen count cannot be read is left out.
func readDiskCounts(sysfs string, seenOn func(uint32) (uint64, bool)) (map[uint32]diskCount, error) {
	names, err := diskNames(sysfs)
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]diskCount, len(names))
	for _, name := range names {
		dev, ok := requestDisk(sysfs, name)
		if !ok {
			continue
		}
		c, ok := readDiskCount(sysfs, name)
		if !ok {
			continue
		}
		if c.seen, ok = seenOn(dev); ok {
			out[dev] = c
		}
	}
	return out, nil
}

// diskNames lists the disks under sysfs's block class.
func diskNames(sysfs string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(cmpOr(sysfs, "/sys"), "block"))
	if err != nil {
		return nil, fmt.Errorf("listing disks: %w", err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

// requestDisk returns the dev_t of disk name when it is request-based (a
// blk-mq queue: mq/); ok is false for a bio-based disk, or one whose dev
// file cannot be read.
func requestDisk(sysfs, name string) (dev uint32, ok bool) {
	dir := filepath.Join(cmpOr(sysfs, "/sys"), "block", name)
	if _, err := os.Stat(filepath.Join(dir, "mq")); err != nil {
		return 0, false // bio-based: no requests to see
	}
	devb, err := os.ReadFile(filepath.Join(dir, "dev"))
	if err != nil {
		return 0, false
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(devb)), "%d:%d", &major, &minor); err != nil {
		return 0, false
	}
	return major<<20 | minor, true
}

// readDiskCount reads disk name's stat.
func readDiskCount(sysfs, name string) (diskCount, bool) {
	st, err := diskstat.Read(sysfs, name)
	if err != nil {
		return diskCount{}, false
	}
	return diskCount{name: name, ios: st.IOs, inflight: st.InFlight}, true
}

// diskWatchEvery is how often a diskWatch lists the disks for new ones.
const diskWatchEvery = time.Second

// diskWatch holds the baselines of the disks compared: those there when
// it starts, and those that appear later, from their first sighting.
type diskWatch struct {
	sysfs string
	// seenOn returns what the programs have seen on dev so far; ok false
	// when it cannot be read.
	seenOn func(dev uint32) (n uint64, ok bool)

	mu    sync.Mutex
	base  map[uint32]diskCount
	names map[string]bool // every disk looked at, request-based or not

	stop, done chan struct{}
}

// watchDisks takes the baselines of the disks there now and, until
// close, of those that appear, every diskWatchEvery. nil when
// /sys/block cannot be listed.
func watchDisks(sysfs string, seenOn func(uint32) (uint64, bool)) *diskWatch {
	names, err := diskNames(sysfs)
	if err != nil {
		return nil
	}
	w := &diskWatch{sysfs: sysfs, seenOn: seenOn, base: map[uint32]diskCount{}, names: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, name := range names {
		w.names[name] = true
		if dev, ok := requestDisk(sysfs, name); ok {
			if c, ok := readDiskCount(sysfs, name); ok {
				w.base[dev] = c
			}
		}
	}
	go w.run()
	return w
}

func (w *diskWatch) run() {
	defer close(w.done)
	t := time.NewTicker(diskWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.sight()
		}
	}
}

// sight takes the baseline of each disk not looked at before: what the
// programs had seen on it, then its stat (in that order: what completes
// between the two reads counts as seen, so no unseen completion is
// hidden).
func (w *diskWatch) sight() {
	names, err := diskNames(w.sysfs)
	if err != nil {
		return
	}
	for _, name := range names {
		w.mu.Lock()
		known := w.names[name]
		w.names[name] = true
		w.mu.Unlock()
		if known {
			continue
		}
		dev, ok := requestDisk(w.sysfs, name)
		if !ok {
			continue
		}
		seen, ok := w.seenOn(dev)
		if !ok {
			continue
		}
		c, ok := readDiskCount(w.sysfs, name)
		if !ok {
			continue
		}
		c.seen, c.late = seen, true
		w.mu.Lock()
		if _, there := w.base[dev]; !there {
			w.base[dev] = c
		}
		w.mu.Unlock()
	}
}

// baselines returns a copy of the baselines taken so far.
func (w *diskWatch) baselines() map[uint32]diskCount {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[uint32]diskCount, len(w.base))
	for dev, c := range w.base {
		out[dev] = c
	}
	return out
}

// close stops the sightings (no baseline is taken after it returns).
func (w *diskWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// unseenCompletionsPrefix begins the loss of each device's completions the
// kernel counted and no program saw (unseenCompletionsWhat).
const unseenCompletionsPrefix = event.DiskUnseenPrefix

// unseenCompletionsWhat names the loss of disk name's unseen completions;
// late, for a disk first sighted mid-run, says that its count starts there.
func unseenCompletionsWhat(name string, late bool) string {
	from := ""
	if late {
		from = ", counted from when whyslow first saw the disk, mid-run"
	}
	return unseenCompletionsPrefix + name + " (/sys/block/" + name + "/stat" + from + ") that reached none of whyslow's programs (the kernel ran none for them, without a recursion miss): missing from its latency, I/O and fault counts"
}

// unseenCompletions returns, per disk of both before and now (the same
// disk: same dev_t and name, no count gone down), how many completions
// the kernel counted between them beyond those the programs saw meanwhile
// (seen, by dev_t, less what they had seen at before) and those in flight
// at before, as losses of probe, by disk name.
func unseenCompletions(probe string, before, now map[uint32]diskCount, seen map[uint32]uint64) []event.Loss {
	var out []event.Loss
	for dev, b := range before {
		n, ok := now[dev]
		if !ok || n.name != b.name || n.ios < b.ios || seen[dev] < b.seen {
			continue
		}
		if d, ok := n.ios-b.ios, seen[dev]-b.seen+b.inflight; d > ok {
			out = append(out, event.Loss{Probe: probe, What: unseenCompletionsWhat(b.name, b.late), Count: d - ok})
		}
	}
	slices.SortFunc(out, func(a, b event.Loss) int { return strings.Compare(a.What, b.What) })
	return out
}
