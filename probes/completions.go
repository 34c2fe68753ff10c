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
// shortfall: bio-based devices (zram, dm, md, bcache: no request) are
// left out; passthrough requests and queues with iostats off make the
// kernel's count smaller, never larger. The stat is read after the
// programs are attached and before they are detached, so the edges only
// add to what the programs saw. A device that appears during the run, or
// whose counts go down (removed and made again), is left out.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/whyslow/whyslow/internal/event"
)

// diskCount is one request-based disk's completed I/Os, as the kernel
// counted them.
type diskCount struct {
	name     string
	ios      uint64 // reads + writes + discards + flushes completed
	inflight uint64 // requests in flight
}

// parseDiskStat returns the completed I/Os of a /sys/block/<disk>/stat
// line, fields 1, 5, 12 and 16 (reads, writes, discards, flushes: those
// the kernel has, 11 fields before 4.18, 15 before 5.5), and the I/Os in
// flight (field 9).
func parseDiskStat(line string) (ios, inflight uint64, err error) {
	f := strings.Fields(line)
	if len(f) < 11 {
		return 0, 0, fmt.Errorf("disk stat %q: %d fields, want at least 11", line, len(f))
	}
	field := func(i int) (uint64, error) {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("disk stat %q: field %d: %w", line, i+1, err)
		}
		return n, nil
	}
	for _, i := range []int{0, 4, 11, 15} {
		if i >= len(f) {
			break
		}
		n, err := field(i)
		if err != nil {
			return 0, 0, err
		}
		ios += n
	}
	if inflight, err = field(8); err != nil {
		return 0, 0, err
	}
	return ios, inflight, nil
}

// readDiskCounts returns the completed I/Os of every request-based disk
// under sysfs's block class, by kernel dev_t (major<<20|minor). A disk
// whose files cannot be read is left out.
func readDiskCounts(sysfs string) (map[uint32]diskCount, error) {
	root := filepath.Join(cmpOr(sysfs, "/sys"), "block")
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("listing disks: %w", err)
	}
	out := make(map[uint32]diskCount, len(ents))
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "mq")); err != nil {
			continue // bio-based: no requests to see
		}
		devb, err1 := os.ReadFile(filepath.Join(dir, "dev"))
		statb, err2 := os.ReadFile(filepath.Join(dir, "stat"))
		if err1 != nil || err2 != nil {
			continue
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(devb)), "%d:%d", &major, &minor); err != nil {
			continue
		}
		ios, inflight, err := parseDiskStat(string(statb))
		if err != nil {
			continue
		}
		out[major<<20|minor] = diskCount{name: e.Name(), ios: ios, inflight: inflight}
	}
	return out, nil
}

// unseenCompletionsPrefix begins the loss of each device's completions the
// kernel counted and no program saw (unseenCompletionsWhat).
const unseenCompletionsPrefix = event.DiskUnseenPrefix

// unseenCompletionsWhat names the loss of disk name's unseen completions.
func unseenCompletionsWhat(name string) string {
	return unseenCompletionsPrefix + name + " (/sys/block/" + name + "/stat) that reached none of whyslow's programs (the kernel ran none for them, without a recursion miss): missing from its latency, I/O and fault counts"
}

// unseenCompletions returns, per disk of both before and now (the same
// disk: same dev_t and name, no count gone down), how many completions
// the kernel counted between them beyond seen (the completions the
// programs saw, by dev_t) and those in flight at before, as losses of
// probe, by disk name.
func unseenCompletions(probe string, before, now map[uint32]diskCount, seen map[uint32]uint64) []event.Loss {
	var out []event.Loss
	for dev, b := range before {
		n, ok := now[dev]
		if !ok || n.name != b.name || n.ios < b.ios {
			continue
		}
		if d, ok := n.ios-b.ios, seen[dev]+b.inflight; d > ok {
			out = append(out, event.Loss{Probe: probe, What: unseenCompletionsWhat(b.name), Count: d - ok})
		}
	}
	slices.SortFunc(out, func(a, b event.Loss) int { return strings.Compare(a.What, b.What) })
	return out
}
