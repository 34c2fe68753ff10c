package symbolize

import (
	"container/list"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Cache bounds.
const (
	defaultMaxBinaries = 64
	// DefaultMaxSymbolBytes bounds the heap that a UserCache's symbol
	// tables keep, by their accounted size (binary.bytes: 12 bytes a
	// symbol, its name, and a little per binary). A stripped Go binary of
	// 20,000 functions takes some 1.5 MiB, libc some 60 KiB. The bound is
	// set well above what the programs blocked at once usually need: when
	// it binds, a table evicted is read again at its next stack (some 30 ms
	// of CPU and 11 MB of garbage for such a Go binary), and a bound of
	// 16 MiB with 16 such binaries blocked on I/O re-read them stack after
	// stack and took 55 s of CPU in a 60 s run (BENCHMARKS.md).
	DefaultMaxSymbolBytes = 64 << 20
	defaultMaxProcs       = 256
	// maxMapsAge is how long a process's maps are trusted before they are read
	// again. An exec keeps the pid but replaces every mapping; addresses that
	// fall outside the cached mappings also force a re-read.
	maxMapsAge = 5 * time.Second
	// minMapsReread is how long after a read of a process's maps an
	// address outside them is left unresolved rather than read for again.
	// A stack often holds such addresses for good (a return address
	// walked from a binary without frame pointers, in no mapping), and
	// reading the maps again for each such stack cost the off-CPU probe a
	// third of whyslow's CPU at 5000 writes a second and, under qemu's
	// TCG, starved the writer it watched (d28). A library mapped since
	// the read (dlopen) or an exec is resolved at most this late.
	minMapsReread = time.Second
)

// lru is a small least-recently-used map, bounded by its number of items
// and, when costOf is set, by the sum of their costs.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // front = most recent; values are K
	items map[K]lruItem[V]

	costOf  func(V) int // nil: every item costs nothing
	maxCost int
	cost    int // the items' costs together
}

type lruItem[V any] struct {
	v    V
	cost int
	elt  *list.Element
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	if max < 1 {
		max = 1
	}
	return &lru[K, V]{max: max, order: list.New(), items: map[K]lruItem[V]{}}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	it, ok := c.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(it.elt)
	return it.v, true
}

// put keeps v under k, evicting the least recently used items until both
// bounds hold. An item that costs more than maxCost on its own is not kept
// (put reports false); the caller may still use it.
func (c *lru[K, V]) put(k K, v V) bool {
	c.remove(k)
	cost := 0
	if c.costOf != nil {
		cost = c.costOf(v)
		if cost > c.maxCost {
			return false
		}
	}
	for len(c.items) >= c.max || (len(c.items) > 0 && c.cost+cost > c.maxCost && c.costOf != nil) {
		c.remove(c.order.Back().Value.(K))
	}
	c.items[k] = lruItem[V]{v: v, cost: cost, elt: c.order.PushFront(k)}
	c.cost += cost
	return true
}

func (c *lru[K, V]) remove(k K) {
	if it, ok := c.items[k]; ok {
		c.order.Remove(it.elt)
		delete(c.items, k)
		c.cost -= it.cost
	}
}

func (c *lru[K, V]) len() int { return len(c.items) }

// binaries caches parsed ELF files by device and inode, so that a library
// mapped by many processes is read once. Failures are cached too (nil).
// It keeps at most max binaries and maxBytes of their tables (binary.bytes),
// evicting the least recently used; a binary whose table alone is larger
// than maxBytes is read, used for the stack at hand, and not kept.
type binaries struct {
	mu    sync.Mutex
	cache *lru[string, *binary]
	// uncached counts the reads of binaries too large to keep.
	uncached int
}

func newBinaries(max, maxBytes int) *binaries {
	c := newLRU[string, *binary](max)
	c.costOf, c.maxCost = (*binary).bytes, maxBytes
	return &binaries{cache: c}
}

func (bs *binaries) get(m mapping, open func(mapping) (*os.File, error)) *binary {
	key := fmt.Sprintf("%s:%d", m.dev, m.inode)
	if m.deleted() {
		key += " (deleted)"
	}
	return bs.getKey(key, func() *binary {
		f, err := open(m)
		if err != nil {
			return nil
		}
		defer f.Close()
		b, _ := readBinary(f)
		return b
	})
}

// getKey returns the binary cached under key, or reads it.
func (bs *binaries) getKey(key string, read func() *binary) *binary {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if b, ok := bs.cache.get(key); ok {
		return b
	}
	b := read()
	if !bs.cache.put(key, b) {
		bs.uncached++
	}
	return b
}

type procEntry struct {
	user   *User
	loaded time.Time
}

// UserCache resolves user stacks of many processes, keeping the maps of at
// most maxProcs processes and the symbols of at most maxBinaries files and
// DefaultMaxSymbolBytes of their tables. No frame is lost to the bounds: a
// binary evicted is read again when next needed, and one too large to keep
// is read for each stack that needs it. It is safe for concurrent use.
type UserCache struct {
	procfs string
	bins   *binaries
	mu     sync.Mutex
	procs  *lru[uint32, procEntry]
	now    func() time.Time
	// mapsReads counts the reads of processes' maps.
	mapsReads int
}

// NewUserCache returns a cache reading <procfs>/PID/maps. Zero bounds take
// defaults (256 processes, 64 binaries).
func NewUserCache(procfs string, maxProcs, maxBinaries int) *UserCache {
	if maxProcs <= 0 {
		maxProcs = defaultMaxProcs
	}
	if maxBinaries <= 0 {
		maxBinaries = defaultMaxBinaries
	}
	return &UserCache{
		procfs: procfs,
		bins:   newBinaries(maxBinaries, DefaultMaxSymbolBytes),
		procs:  newLRU[uint32, procEntry](maxProcs),
		now:    time.Now,
	}
}

// Frames resolves a user stack of process tgid, innermost first. When the
// process's maps cannot be read (it has exited), it returns frames with
// addresses only and the error.
func (c *UserCache) Frames(tgid uint32, addrs []uint64) ([]event.Frame, error) {
	c.mu.Lock()
	e, ok := c.procs.get(tgid)
	c.mu.Unlock()
	age := c.now().Sub(e.loaded)
	fresh := ok && age < maxMapsAge
	if fresh && age >= minMapsReread {
		for _, a := range addrs {
			if !e.user.Contains(a) {
				fresh = false
				break
			}
		}
	}
	if !fresh {
		c.mu.Lock()
		c.mapsReads++
		c.mu.Unlock()
		u, err := loadUser(c.procfs, tgid, c.bins)
		switch {
		case err == nil:
			e = procEntry{user: u, loaded: c.now()}
			c.mu.Lock()
			c.procs.put(tgid, e)
			c.mu.Unlock()
		case !ok:
			out := make([]event.Frame, len(addrs))
			for i, a := range addrs {
				out[i] = event.Frame{Addr: a}
			}
			return out, err
		}
		// On error with an older entry, the old maps are the best we have.
	}
	return e.user.Frames(addrs), nil
}

// Forget drops a process, e.g. when it exits or execs.
func (c *UserCache) Forget(tgid uint32) {
	c.mu.Lock()
	c.procs.remove(tgid)
	c.mu.Unlock()
}
