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
	defaultMaxProcs    = 256
	// maxMapsAge is how long a process's maps are trusted before they are read
	// again. An exec keeps the pid but replaces every mapping; addresses that
	// fall outside the cached mappings also force a re-read.
	maxMapsAge = 5 * time.Second
)

// lru is a small least-recently-used map.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // front = most recent; values are K
	items map[K]lruItem[V]
}

type lruItem[V any] struct {
	v   V
	elt *list.Element
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

func (c *lru[K, V]) put(k K, v V) {
	if it, ok := c.items[k]; ok {
		it.v = v
		c.items[k] = it
		c.order.MoveToFront(it.elt)
		return
	}
	for len(c.items) >= c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(K))
	}
	c.items[k] = lruItem[V]{v: v, elt: c.order.PushFront(k)}
}

func (c *lru[K, V]) remove(k K) {
	if it, ok := c.items[k]; ok {
		c.order.Remove(it.elt)
		delete(c.items, k)
	}
}

func (c *lru[K, V]) len() int { return len(c.items) }

// binaries caches parsed ELF files by device and inode, so that a library
// mapped by many processes is read once. Failures are cached too (nil).
type binaries struct {
	mu    sync.Mutex
	cache *lru[string, *binary]
}

func newBinaries(max int) *binaries {
	return &binaries{cache: newLRU[string, *binary](max)}
}

func (bs *binaries) get(m mapping, open func(mapping) (*os.File, error)) *binary {
	key := fmt.Sprintf("%s:%d", m.dev, m.inode)
	if m.deleted() {
		key += " (deleted)"
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if b, ok := bs.cache.get(key); ok {
		return b
	}
	var b *binary
	if f, err := open(m); err == nil {
		b, _ = readBinary(f)
		f.Close()
	}
	bs.cache.put(key, b)
	return b
}

type procEntry struct {
	user   *User
	loaded time.Time
}

// UserCache resolves user stacks of many processes, keeping the maps of at
// most maxProcs processes and the symbols of at most maxBinaries files.
// It is safe for concurrent use.
type UserCache struct {
	procfs string
	bins   *binaries
	mu     sync.Mutex
	procs  *lru[uint32, procEntry]
	now    func() time.Time
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
		bins:   newBinaries(maxBinaries),
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
	fresh := ok && c.now().Sub(e.loaded) < maxMapsAge
	if fresh {
		for _, a := range addrs {
			if !e.user.Contains(a) {
				fresh = false
				break
			}
		}
	}
	if !fresh {
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
