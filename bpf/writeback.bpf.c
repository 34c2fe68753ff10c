/* writeback: the kernel's write-back throttles and journal commits, from
 * their tracepoints (classic tracepoint programs, reading the records;
 * their layouts are the same on 5.10, 6.1, 6.12 and 6.18: only the names
 * of two fields of balance_dirty_pages changed, bdi_* to wb_*, at the same
 * offsets).
 *
 *   wbt:wbt_step, wbt:wbt_lat,       writeback throttling scaled a device's
 *   wbt:wbt_stat                     queue depth; a latency missed its target;
 *                                    the read and write latencies of a window
 *                                    that missed it or while it was scaled
 *   writeback:balance_dirty_pages    a writer paused for too many dirty pages
 *   jbd2:jbd2_start_commit .. jbd2_end_commit, jbd2_run_stats
 *                                    one journal commit, its phases timed
 *   jbd2:jbd2_submit_inode_data      a commit writes an inode's ordered data
 *   writeback:writeback_dirty_folio (5.10: writeback_dirty_page)
 *                                    who dirtied an inode: names the process
 *                                    whose data a commit had to write
 *   xfs:xfs_log_force                a force of an xfs log (fsync, sync, the
 *                                    log worker, the AIL), and who forced it
 *   xfs:xlog_iclog_sync .. xlog_iclog_sync_done (6.1+)
 *                                    one write of an xfs log buffer (iclog),
 *                                    submitted to completed
 *
 * None of them is on a hot path but writeback_dirty_folio (one per page
 * newly dirtied: a hash update); an xfs log is forced at most once per
 * fsync, and written at most once per force or per full log buffer. */
#include "common.h"
#include "events.h"

enum wb_kind {
	WB_WBT_STEP = 1,
	WB_WBT_LAT = 2,
	WB_DIRTY = 3,
	WB_COMMIT = 4,
	WB_ORDERED = 5,
	WB_WBT_STAT = 6,
	WB_LOG_FORCE = 7,
	WB_LOG_WRITE = 8,
};

KEEP_TYPE(enum wb_kind, wb_kind_type);

/* --- tracepoint records (offsets from the tracefs format files) --- */

struct tp_wbt_step {
	__u64 common;
	char name[32];
	const char *msg;
	int step;
	unsigned long window;
	unsigned int bg;
	unsigned int normal;
	unsigned int max;
};

struct tp_wbt_lat {
	__u64 common;
	char name[32];
	unsigned long lat;
};

struct tp_wbt_stat {
	__u64 common;
	char name[32];
	__s64 rmean;
	__u64 rmin;
	__u64 rmax;
	__s64 rnr_samples;
	__s64 rtime;
	__s64 wmean;
	__u64 wmin;
	__u64 wmax;
	__s64 wnr_samples;
	__s64 wtime;
};

struct tp_balance_dirty_pages {
	__u64 common;
	char bdi[32];
	unsigned long limit;
	unsigned long setpoint;
	unsigned long dirty;
	unsigned long wb_setpoint; /* bdi_setpoint up to 6.12 */
	unsigned long wb_dirty; /* bdi_dirty up to 6.12 */
	unsigned long dirty_ratelimit;
	unsigned long task_ratelimit;
	unsigned int dirtied;
	unsigned int dirtied_pause;
	unsigned long paused;
	long pause;
	unsigned long period;
	long think;
	__u64 cgroup_ino;
};

struct tp_jbd2_commit {
	__u64 common;
	__u32 dev;
	char sync_commit;
	char pad[3];
	__u32 transaction;
};

struct tp_jbd2_run_stats {
	__u64 common;
	__u32 dev;
	__u32 tid;
	unsigned long wait;
	unsigned long request_delay;
	unsigned long running;
	unsigned long locked;
	unsigned long flushing;
	unsigned long logging;
	__u32 handle_count;
	__u32 blocks;
	__u32 blocks_logged;
};

struct tp_jbd2_inode {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__u64 ino;
};

struct tp_dirty_folio {
	__u64 common;
	char name[32];
	__u64 ino;
	unsigned long index;
};

struct tp_xfs_log_force {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__s64 lsn;
	__u64 caller_ip;
};

struct tp_xlog_iclog {
	__u64 common;
	__u32 dev;
	__u32 state;
	__s32 refcount;
	__u32 offset;
	__u32 flags;
	__u32 pad;
	__u64 lsn;
	__u64 caller_ip;
};

/* --- records on the ring --- */

struct wbt_event {
	enum wb_kind kind; /* WB_WBT_STEP or WB_WBT_LAT */
	__s32 step; /* scale step (negative: scaled up, more depth) */
	__u64 time_ns;
	__u64 window_us; /* the monitoring window (step) */
	__u64 lat_us; /* the latency that missed the target (lat) */
	__u32 bg, normal, max; /* depth limits after the step */
	__u32 pad;
	char bdi[32]; /* "MAJ:MIN" */
	char msg[32];
};

/* A window's completion latencies (ns), reads and writes. */
struct wbt_stat_event {
	enum wb_kind kind; /* WB_WBT_STAT */
	__u32 pad;
	__u64 time_ns;
	__s64 rmean, rmin, rmax, rsamples;
	__s64 wmean, wmin, wmax, wsamples;
	char bdi[32]; /* "MAJ:MIN" */
};

struct dirty_event {
	enum wb_kind kind; /* WB_DIRTY */
	__u32 pid;
	__u32 tgid;
	__u32 pad;
	__u64 time_ns;
	__u64 limit, setpoint, dirty, wb_setpoint, wb_dirty; /* pages */
	__u64 dirty_ratelimit, task_ratelimit; /* KB/s */
	__s64 pause_ms;
	__u64 period_ms;
	__u64 paused_ms;
	__u64 cgroup_ino;
	char comm[TASK_COMM_LEN];
	char bdi[32];
};

struct commit_event {
	enum wb_kind kind; /* WB_COMMIT */
	__u32 dev; /* kernel dev_t of the journal's filesystem device */
	__u32 tid;
	__u8 sync_commit;
	__u8 stats; /* the run_stats fields below are set */
	__u8 pad[2];
	__u64 start_ns, locking_ns, flushing_ns, logging_ns, end_ns; /* 0: not seen */
	__u64 running_jiffies, locked_jiffies, flushing_jiffies, logging_jiffies;
	__u32 handle_count, blocks, blocks_logged;
	__u32 pad2;
};

struct ordered_event {
	enum wb_kind kind; /* WB_ORDERED */
	__u32 dev;
	__u32 tid; /* the commit (its transaction) */
	__u32 dirtier_tgid; /* 0: not seen dirtying it */
	__u64 time_ns;
	__u64 ino;
	char comm[TASK_COMM_LEN]; /* the dirtier's */
};

/* A force of an xfs log (xfs_log_force: all of it; xfs_log_force_seq:
 * up to a checkpoint sequence, lsn). */
struct log_force_event {
	enum wb_kind kind; /* WB_LOG_FORCE */
	__u32 dev; /* kernel dev_t of the filesystem's (data) device */
	__u32 pid;
	__u32 tgid;
	__u64 time_ns;
	__s64 lsn; /* 0: the whole log */
	__u64 caller; /* the function that forced it (return address) */
	char comm[TASK_COMM_LEN];
};

/* One write of an xfs log buffer, submitted (xlog_iclog_sync) to
 * completed (xlog_iclog_sync_done). */
struct log_write_event {
	enum wb_kind kind; /* WB_LOG_WRITE */
	__u32 dev;
	__u64 start_ns;
	__u64 end_ns;
	__u64 lsn;
	__u32 flags; /* XLOG_ICL_NEED_FLUSH 1, XLOG_ICL_NEED_FUA 2 */
	__u32 size; /* bytes in the buffer at submission */
};

KEEP_TYPE(struct wbt_event, wbt_event_type);
KEEP_TYPE(struct log_force_event, log_force_event_type);
KEEP_TYPE(struct log_write_event, log_write_event_type);
KEEP_TYPE(struct wbt_stat_event, wbt_stat_event_type);
KEEP_TYPE(struct dirty_event, dirty_event_type);
KEEP_TYPE(struct commit_event, commit_event_type);
KEEP_TYPE(struct ordered_event, ordered_event_type);
KEEP_TYPE(struct inode_key, inode_key_type);

/* The commit each journal (by device) is running. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct commit_event);
} commits SEC(".maps");

/* The whole disk of each filesystem device that is a partition (filled
 * by user space from the mounts at the start): the dirtiers are keyed by
 * the disk (the bdi's), the commits name the filesystem's device. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} fsdisk SEC(".maps");

struct inode_key {
	__u64 ino;
	__u32 dev; /* kernel dev_t of the whole disk */
	__u32 pad;
};

/* Who last dirtied each inode of each disk. */
struct dirtier {
	__u32 tgid;
	__u32 pad;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct inode_key);
	__type(value, struct dirtier);
} dirtiers SEC(".maps");

struct iclog_key {
	__u64 lsn;
	__u32 dev;
	__u32 pad;
};

struct iclog_write {
	__u64 start_ns;
	__u32 flags;
	__u32 size;
};

/* The log buffers being written, by device and their first LSN. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct iclog_key);
	__type(value, struct iclog_write);
} iclogs SEC(".maps");

KEEP_TYPE(struct iclog_key, iclog_key_type);
KEEP_TYPE(struct iclog_write, iclog_write_type);

SEC("tracepoint/wbt/wbt_step")
int wb_wbt_step(struct tp_wbt_step *ctx)
{
	struct wbt_event *e = EVENT_RESERVE(struct wbt_event);
	if (!e)
		return 0;
	e->kind = WB_WBT_STEP;
	e->time_ns = bpf_ktime_get_ns();
	e->step = ctx->step;
	e->window_us = ctx->window;
	e->lat_us = 0;
	e->bg = ctx->bg;
	e->normal = ctx->normal;
	e->max = ctx->max;
	e->pad = 0;
	bpf_probe_read_kernel_str(e->bdi, sizeof(e->bdi), ctx->name);
	if (bpf_probe_read_kernel_str(e->msg, sizeof(e->msg), ctx->msg) < 0)
		e->msg[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/wbt/wbt_lat")
int wb_wbt_lat(struct tp_wbt_lat *ctx)
{
	struct wbt_event *e = EVENT_RESERVE(struct wbt_event);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = WB_WBT_LAT;
	e->time_ns = bpf_ktime_get_ns();
	e->lat_us = ctx->lat;
	bpf_probe_read_kernel_str(e->bdi, sizeof(e->bdi), ctx->name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/wbt/wbt_stat")
int wb_wbt_stat(struct tp_wbt_stat *ctx)
{
	struct wbt_stat_event *e = EVENT_RESERVE(struct wbt_stat_event);
	if (!e)
		return 0;
	e->kind = WB_WBT_STAT;
	e->pad = 0;
	e->time_ns = bpf_ktime_get_ns();
	e->rmean = ctx->rmean;
	e->rmin = ctx->rmin;
	e->rmax = ctx->rmax;
	e->rsamples = ctx->rnr_samples;
	e->wmean = ctx->wmean;
	e->wmin = ctx->wmin;
	e->wmax = ctx->wmax;
	e->wsamples = ctx->wnr_samples;
	bpf_probe_read_kernel_str(e->bdi, sizeof(e->bdi), ctx->name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/writeback/balance_dirty_pages")
int wb_dirty(struct tp_balance_dirty_pages *ctx)
{
	/* The event fires on each pass of balance_dirty_pages' slow path,
	 * pause 0 included: only the passes that sleep cost the writer. */
	if (ctx->pause <= 0)
		return 0;
	struct dirty_event *e = EVENT_RESERVE(struct dirty_event);
	if (!e)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	e->kind = WB_DIRTY;
	e->pid = (__u32)id;
	e->tgid = id >> 32;
	e->pad = 0;
	e->time_ns = bpf_ktime_get_ns();
	e->limit = ctx->limit;
	e->setpoint = ctx->setpoint;
	e->dirty = ctx->dirty;
	e->wb_setpoint = ctx->wb_setpoint;
	e->wb_dirty = ctx->wb_dirty;
	e->dirty_ratelimit = ctx->dirty_ratelimit;
	e->task_ratelimit = ctx->task_ratelimit;
	e->pause_ms = ctx->pause;
	e->period_ms = ctx->period;
	e->paused_ms = ctx->paused;
	e->cgroup_ino = ctx->cgroup_ino;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->bdi, sizeof(e->bdi), ctx->bdi);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* commit_phase notes the time a commit of a journal reached a phase; the
 * start makes a new entry. */
static __always_inline int commit_phase(struct tp_jbd2_commit *ctx, int phase)
{
	__u32 dev = ctx->dev;
	__u64 now = bpf_ktime_get_ns();
	if (phase == 0) {
		struct commit_event c = {};
		c.kind = WB_COMMIT;
		c.dev = dev;
		c.tid = ctx->transaction;
		c.sync_commit = ctx->sync_commit != 0;
		c.start_ns = now;
		if (bpf_map_update_elem(&commits, &dev, &c, BPF_ANY))
			lose(LOSS_MAP_FULL);
		return 0;
	}
	struct commit_event *c = bpf_map_lookup_elem(&commits, &dev);
	if (!c || c->tid != ctx->transaction) {
		/* started before the probe: time it from here */
		struct commit_event n = {};
		n.kind = WB_COMMIT;
		n.dev = dev;
		n.tid = ctx->transaction;
		if (bpf_map_update_elem(&commits, &dev, &n, BPF_ANY)) {
			lose(LOSS_MAP_FULL);
			return 0;
		}
		c = bpf_map_lookup_elem(&commits, &dev);
		if (!c)
			return 0;
	}
	if (ctx->sync_commit)
		c->sync_commit = 1;
	switch (phase) {
	case 1:
		c->locking_ns = now;
		break;
	case 2:
		c->flushing_ns = now;
		break;
	case 3:
		c->logging_ns = now;
		break;
	default:
		c->end_ns = now;
		event_output(c, sizeof(*c));
		bpf_map_delete_elem(&commits, &dev);
	}
	return 0;
}

SEC("tracepoint/jbd2/jbd2_start_commit")
int wb_commit_start(struct tp_jbd2_commit *ctx) { return commit_phase(ctx, 0); }

SEC("tracepoint/jbd2/jbd2_commit_locking")
int wb_commit_locking(struct tp_jbd2_commit *ctx) { return commit_phase(ctx, 1); }

SEC("tracepoint/jbd2/jbd2_commit_flushing")
int wb_commit_flushing(struct tp_jbd2_commit *ctx) { return commit_phase(ctx, 2); }

SEC("tracepoint/jbd2/jbd2_commit_logging")
int wb_commit_logging(struct tp_jbd2_commit *ctx) { return commit_phase(ctx, 3); }

SEC("tracepoint/jbd2/jbd2_end_commit")
int wb_commit_end(struct tp_jbd2_commit *ctx) { return commit_phase(ctx, 4); }

/* jbd2_run_stats comes before jbd2_end_commit, from the same commit. */
SEC("tracepoint/jbd2/jbd2_run_stats")
int wb_commit_stats(struct tp_jbd2_run_stats *ctx)
{
	__u32 dev = ctx->dev;
	struct commit_event *c = bpf_map_lookup_elem(&commits, &dev);
	if (!c || c->tid != ctx->tid)
		return 0;
	c->stats = 1;
	c->running_jiffies = ctx->running;
	c->locked_jiffies = ctx->locked;
	c->flushing_jiffies = ctx->flushing;
	c->logging_jiffies = ctx->logging;
	c->handle_count = ctx->handle_count;
	c->blocks = ctx->blocks;
	c->blocks_logged = ctx->blocks_logged;
	return 0;
}

SEC("tracepoint/jbd2/jbd2_submit_inode_data")
int wb_ordered(struct tp_jbd2_inode *ctx)
{
	__u32 dev = ctx->dev;
	__u64 ino = ctx->ino;
	struct ordered_event *e = EVENT_RESERVE(struct ordered_event);
	if (!e)
		return 0;
	e->kind = WB_ORDERED;
	e->dev = dev;
	e->time_ns = bpf_ktime_get_ns();
	e->ino = ino;
	struct commit_event *c = bpf_map_lookup_elem(&commits, &dev);
	e->tid = c ? c->tid : 0;
	struct inode_key k = {.ino = ino, .dev = dev};
	__u32 *disk = bpf_map_lookup_elem(&fsdisk, &dev);
	if (disk)
		k.dev = *disk;
	struct dirtier *d = bpf_map_lookup_elem(&dirtiers, &k);
	if (d) {
		e->dirtier_tgid = d->tgid;
		__builtin_memcpy(e->comm, d->comm, sizeof(e->comm));
	} else {
		e->dirtier_tgid = 0;
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* bdi_dev parses a bdi's name, "MAJ:MIN", into a kernel dev_t
 * (major << 20 | minor); 0 for another name. */
static __always_inline __u32 bdi_dev(const char *name)
{
	__u32 major = 0, minor = 0;
	int part = 0;
	for (int i = 0; i < 16; i++) {
		char c = name[i];
		if (c == ':' && part == 0) {
			part = 1;
			continue;
		}
		if (c < '0' || c > '9')
			break;
		if (part == 0)
			major = major * 10 + (c - '0');
		else
			minor = minor * 10 + (c - '0');
	}
	return part ? (major << 20) | minor : 0;
}

/* Attached to writeback:writeback_dirty_folio, or writeback_dirty_page on
 * kernels before folios (same record). */
SEC("tracepoint/writeback/writeback_dirty_folio")
int wb_dirtied(struct tp_dirty_folio *ctx)
{
	/* the context may not be read at a variable offset: copy the name */
	char name[16];
	__builtin_memcpy(name, ctx->name, sizeof(name));
	struct inode_key k = {.ino = ctx->ino, .dev = bdi_dev(name)};
	__u64 id = bpf_get_current_pid_tgid();
	struct dirtier *old = bpf_map_lookup_elem(&dirtiers, &k);
	if (old && old->tgid == (__u32)(id >> 32))
		return 0;
	struct dirtier d = {};
	d.tgid = id >> 32;
	bpf_get_current_comm(d.comm, sizeof(d.comm));
	bpf_map_update_elem(&dirtiers, &k, &d, BPF_ANY);
	return 0;
}

SEC("tracepoint/xfs/xfs_log_force")
int wb_log_force(struct tp_xfs_log_force *ctx)
{
	struct log_force_event *e = EVENT_RESERVE(struct log_force_event);
	if (!e)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	e->kind = WB_LOG_FORCE;
	e->dev = ctx->dev;
	e->pid = (__u32)id;
	e->tgid = id >> 32;
	e->time_ns = bpf_ktime_get_ns();
	e->lsn = ctx->lsn;
	e->caller = ctx->caller_ip;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/xfs/xlog_iclog_sync")
int wb_iclog_sync(struct tp_xlog_iclog *ctx)
{
	struct iclog_key k = {.lsn = ctx->lsn, .dev = ctx->dev};
	struct iclog_write w = {.start_ns = bpf_ktime_get_ns(), .flags = ctx->flags, .size = ctx->offset};
	if (bpf_map_update_elem(&iclogs, &k, &w, BPF_ANY))
		lose(LOSS_MAP_FULL);
	return 0;
}

SEC("tracepoint/xfs/xlog_iclog_sync_done")
int wb_iclog_done(struct tp_xlog_iclog *ctx)
{
	struct iclog_key k = {.lsn = ctx->lsn, .dev = ctx->dev};
	struct iclog_write *w = bpf_map_lookup_elem(&iclogs, &k);
	if (!w)
		return 0; /* submitted before the probe */
	struct log_write_event *e = EVENT_RESERVE(struct log_write_event);
	if (e) {
		e->kind = WB_LOG_WRITE;
		e->dev = ctx->dev;
		e->start_ns = w->start_ns;
		e->end_ns = bpf_ktime_get_ns();
		e->lsn = ctx->lsn;
		e->flags = w->flags;
		e->size = w->size;
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&iclogs, &k);
	return 0;
}
