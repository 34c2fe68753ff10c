/* submit: bio submission latency (blktrace's Q2G), per device, and each
 * process's I/O per device.
 *
 * block_bio_queue starts a span keyed by the bio pointer, in the context of
 * the task that submits it (for writeback: a kworker or flusher thread); the
 * span ends when the bio gets a request (block_getrq) or is merged into one
 * (block_bio_backmerge/frontmerge). The span holds the waits before request
 * accounting: a frozen queue (__bio_queue_enter), wbt/iocost throttling and
 * tag allocation. Every span goes into a per-device histogram; spans of at
 * least min_latency_ns are also streamed with who submitted the bio.
 *
 * What block_bio_queue notes also counts the bio for its submitter, per
 * process (tgid), device, cgroup (the bio's blkcg) and operation, in a
 * per-CPU table (io_use): the bios, those that got a request of their own,
 * their bytes and their time in flight, from block_bio_queue to:
 *   - block_rq_complete of the request the bio got, for request-based
 *     devices: the entry waits until then. The request's first bio there
 *     is that bio, or one merged in front of it later (block_bio_
 *     frontmerge), whose entry waits too and leads to it (end_rq_bios);
 *   - block_rq_merge of that request, merged into another with a
 *     scheduler and freed without a completion: its time in flight up to
 *     the merge;
 *   - the merge, for a bio merged into another's request: its bytes count
 *     for its own submitter, its time in flight only up to the merge;
 *   - block_bio_complete, for bio-based devices (zram, dm, md, bcache),
 *     which never get a request: the kernel traces the completion of every
 *     bio that passed block_bio_queue and did not get a request
 *     (BIO_TRACE_COMPLETION; blk_update_request clears it for the others).
 * Deleting the entry at the end also stops a freed bio whose memory is
 * reused by a later bio that skips block_bio_queue (the front part of a
 * split) from ending a stale span with a bogus huge latency. Entries wait
 * in a 4-way table by bio pointer (see slot_of); an end missed leaves a
 * stale entry that a later bio takes (counted lost when it is a bio of
 * the same address: sub_losses). */
#include "common.h"
#include "events.h"
#include "hist.h"
#include "kernel_block.h"
#include "spans.h"

/* 32768 slots x 64 B = 2 MB, four candidate slots per bio: room for a
 * frozen queue's thousands of waiting bios and every bio in flight, with
 * few collisions. */
#define SLOT_BITS 15
#include "devhist.h"

/* Index of the bio argument of each tracepoint (see tp_arg). */
volatile const __u32 arg_bio_queue = 0;
volatile const __u32 arg_getrq = 0;
volatile const __u32 arg_backmerge = 0;
volatile const __u32 arg_frontmerge = 0;
volatile const __u32 arg_bio_complete = 1;
volatile const __u32 arg_rq_complete = 0;
volatile const __u32 arg_rq_merge = 0;

/* The bits of bi_opf that io_flags reads, from the kernel's BTF (enum
 * req_flag_bits differs between kernels); 0 when unknown. */
volatile const __u32 req_sync = 0;
volatile const __u32 req_fua = 0;
volatile const __u32 req_preflush = 0;

/* Set by user space: bpf_get_current_task_btf exists (5.11+), so the
 * submitter's pid and name are plain loads from the current task instead
 * of two helper calls per bio. */
volatile const __u8 use_btf_task = 0;

/* io_use has 1 << io_use_bits entries per CPU, set from user space with
 * the map's size. */
volatile const __u32 io_use_bits = 10;

enum submit_end {
	END_GETRQ = 0,
	END_BACKMERGE = 1,
	END_FRONTMERGE = 2,
};

/* Flags of a bio (struct start, struct io_use). Go: ioSync, ioFUA,
 * ioPreflush, ioEmpty. */
enum io_flag {
	IO_SYNC = 1, /* REQ_SYNC */
	IO_FUA = 2, /* REQ_FUA */
	IO_PREFLUSH = 4, /* REQ_PREFLUSH */
	IO_EMPTY = 8, /* no data: a flush */
};

KEEP_TYPE(enum io_flag, io_flag_type);

/* Where a bio's entry stands. */
enum start_state {
	ST_QUEUED = 0, /* its submission span runs */
	ST_GOTRQ = 1, /* it got a request of its own, not completed yet */
	ST_FRONT = 2, /* merged in front of a request's first bio: counted at
		       * the merge; its entry waits for the request's end, to
		       * lead from the request's new first bio to the one that
		       * got the request (see end_rq_bios) */
};

/* The submit probe's own losses, beside the shared `losses`. Go:
 * submitLossWhat. */
enum sub_loss_kind {
	SUB_LOSS_MISSED = 0, /* a bio queued again, or its slot reused, while its
			      * entry still waited for an end that was missed */
	SUB_LOSS_CHAIN = 1, /* a request's end found more bios merged in front
			     * than end_rq_bios walks */
	SUB_LOSS_KINDS = 2,
};

KEEP_TYPE(enum sub_loss_kind, sub_loss_kind_type);

LOSS_COUNTERS(sub_losses, SUB_LOSS_KINDS);

static __always_inline void sub_lose(__u32 kind)
{
	count_loss(&sub_losses, kind);
}

/* What block_bio_queue notes of a bio: who submitted it and what it is,
 * for its submission span and its accounting at completion. One cache
 * line. */
struct start {
	__u64 bio; /* struct bio *, 0 when free */
	__u64 ns;
	__u64 cgroup; /* kernfs id of the bio's cgroup, 0 when unknown */
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	__u32 bytes;
	__u8 op; /* bi_opf & REQ_OP_MASK */
	__u8 flags; /* enum io_flag */
	__u8 state; /* enum start_state */
	__u8 pad[5];
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << SLOT_BITS);
	__type(key, __u32);
	__type(value, struct start);
} starts SEC(".maps");

/* One submitter's completed bios on one device: the key (tgid, dev,
 * cgroup, op, flags) and its counts. Go: ioUse. */
struct io_use {
	__u32 tgid;
	__u32 dev;
	__u64 cgroup;
	__u8 op;
	__u8 flags;
	__u8 used;
	__u8 pad[5];
	__u64 ios; /* bios completed */
	__u64 requests; /* of which got a request of their own */
	__u64 bytes;
	__u64 inflight_ns; /* block_bio_queue to completion, summed */
	char comm[TASK_COMM_LEN]; /* of the first bio's submitter */
};

/* A direct-mapped table per CPU, probed IO_USE_PROBES entries from the
 * key's hash: cheaper than a hash map on every I/O, with no lock and no
 * shared cache line. User space adds the CPUs' entries of the same key.
 * Sized from user space (io_use_bits); a bio that finds no room is counted
 * in LOSS_MAP_FULL.
 *
 * The table in use is the only entry of io_use (a map of maps): user space
 * swaps a fresh one in every second or so, which returns once no program
 * can still write the old one (the kernel waits for the programs running),
 * then reads the old one whole and adds it to its sums. So the table only
 * holds the submitters of the last swap's interval, however many come and
 * go over days, and the swap costs a bio one array lookup. */
#define IO_USE_PROBES 4

struct io_use_table {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << 10);
	__type(key, __u32);
	__type(value, struct io_use);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct io_use_table);
} io_use SEC(".maps");

KEEP_TYPE(struct io_use, io_use_type);

struct submit_event {
	__u64 start_ns;
	__u64 latency_ns;
	__u64 sector;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	__u32 opf; /* bio->bi_opf: REQ_OP_* | REQ_* flags */
	__u32 bytes;
	enum submit_end end;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

KEEP_TYPE(struct submit_event, submit_event_type);

/* A bio's entry is in one of SLOT_WAYS slots from ptr_slot (the aligned
 * group of them): at iodepth 128 x 2 (256 bios in flight in 32768 slots),
 * 2 ways found both taken for 7-10 bios a run; 4 find all taken about
 * 1e5 times less often. The first slot serves nearly every bio. */
#define SLOT_WAYS 4

/* slot_of returns the entry of a bio among its candidate slots, or NULL. */
static __always_inline struct start *slot_of(__u64 bio)
{
	__u32 k0 = ptr_slot(bio);

#pragma unroll
	for (__u32 i = 0; i < SLOT_WAYS; i++) {
		__u32 k = k0 ^ i;
		struct start *s = bpf_map_lookup_elem(&starts, &k);

		if (s && s->bio == bio)
			return s;
	}
	return 0;
}

/* Entries of `starts` that user space counted lost already, bio -> the
 * entry's ns: in a long run (serve) it sweeps `starts` for bios that got
 * a request and have waited far longer than any I/O takes (their
 * completion reached none of whyslow's programs) and counts them then,
 * not when their address is reused (probes/submitleft.go, sweepStale).
 * Written by user space only; own_stale reads it, on the rare path where
 * a bio's entry is found stale, never per I/O. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} swept SEC(".maps");

/* own_stale counts the loss of a bio whose entry is taken by a new bio
 * of the same address (the memory of a bio whose end was missed, reused):
 * a bio not counted yet (queued or with a request) was lost, unless user
 * space counted it already (swept). */
static __always_inline struct start *own_stale(struct start *s)
{
	__u64 bio = s->bio;
	__u64 *ns;

	if (s->state == ST_FRONT)
		return s;
	ns = bpf_map_lookup_elem(&swept, &bio);
	if (ns && *ns == s->ns) {
		bpf_map_delete_elem(&swept, &bio);
		return s;
	}
	sub_lose(SUB_LOSS_MISSED);
	return s;
}

/* slot_claim returns a slot for a new bio: the first free one of its
 * candidates, or its own (a bio queued again after its end was missed:
 * counted), else the first, whose entry is lost. slot_of looks in the
 * same order, so it finds the new entry before any older one of the same
 * address. */
static __always_inline struct start *slot_claim(__u64 bio)
{
	__u32 k0 = ptr_slot(bio);
	struct start *first = 0;

#pragma unroll
	for (__u32 i = 0; i < SLOT_WAYS; i++) {
		__u32 k = k0 ^ i;
		struct start *s = bpf_map_lookup_elem(&starts, &k);

		if (!s)
			return 0;
		if (!s->bio)
			return s;
		if (s->bio == bio)
			return own_stale(s);
		if (!first)
			first = s;
	}
	lose(LOSS_MAP_FULL);
	return first;
}

static __always_inline __u8 io_flags(__u32 opf, __u32 bytes)
{
	__u8 f = 0;

	if (opf & req_sync)
		f |= IO_SYNC;
	if (opf & req_fua)
		f |= IO_FUA;
	if (opf & req_preflush)
		f |= IO_PREFLUSH;
	if (!bytes)
		f |= IO_EMPTY;
	return f;
}

/* bio_disk_cgroup_btf returns what bio_disk_btf and bio_cgroup_btf (in
 * *cgroup) return, with the bio's two pointer fields loaded before any
 * branch. From 6.x on, the verifier searches the whole kernel BTF by name
 * (`bio__safe_trusted` and three more) at each load of a pointer field
 * through a trusted pointer (a tp_btf argument), once for every verified
 * path that reaches it: some 0.5 ms each here. Walked one after the other,
 * the cgroup's load came after the disk's null test, on two paths. What
 * those loads return is no longer trusted: its own walks search nothing. */
static __always_inline struct gendisk *bio_disk_cgroup_btf(struct bio *bio, __u64 *cgroup)
{
	struct bio___old *old = (void *)bio;
	struct block_device *bdev = 0;
	struct gendisk *disk = 0;
	struct blkcg_gq *blkg = 0;

	/* Known at load time (CO-RE): no branch for the verifier. */
	if (bpf_core_field_exists(bio->bi_bdev))
		bdev = bio->bi_bdev;
	else if (bpf_core_field_exists(old->bi_disk))
		disk = old->bi_disk;
	if (bpf_core_field_exists(bio->bi_blkg))
		blkg = bio->bi_blkg;
	/* Both loads here, before the tests below (the compiler would move
	 * each to where it is used). */
	asm volatile("" : "+r"(bdev), "+r"(disk), "+r"(blkg));
	if (bdev)
		disk = bdev->bd_disk;
	*cgroup = 0;
	if (!blkg)
		return disk;
	struct blkcg *blkcg = blkg->blkcg;
	if (!blkcg)
		return disk;
	struct cgroup *cgrp = blkcg->css.cgroup;
	if (!cgrp)
		return disk;
	struct kernfs_node *kn = cgrp->kn;
	*cgroup = kn ? kn->id : 0;
	return disk;
}

/* The fields of the current task that note_bio reads. */
struct task_struct___sub {
	int pid;
	char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

/* A task's name as two words (struct start's and submit_event's comm). */
struct comm_words {
	__u64 w[2];
};

/* submitter_comm returns the current task's name when the current task is
 * thread pid (the one that queued the bio), else an empty one. */
static __always_inline struct comm_words submitter_comm(__u32 pid)
{
	struct comm_words c = {};

	if (use_btf_task) {
		struct task_struct___sub *t = (void *)bpf_get_current_task_btf();

		if ((__u32)t->pid == pid) {
			const __u64 *w = (const __u64 *)t->comm;

			c.w[0] = w[0];
			c.w[1] = w[1];
		}
		return c;
	}
	if ((__u32)bpf_get_current_pid_tgid() == pid)
		bpf_get_current_comm(&c, sizeof(c));
	return c;
}

/* note_bio notes what a bio is: its device (of disk) and cgroup (from
 * bio_disk_cgroup_btf), size and kind, and the name of the task that
 * queued it when the current task is that one (the ends run in it; else
 * user space names it from its pid). The callers walk the bio's pointers
 * first thing, on the verifier's one path (see bio_disk_cgroup_btf). */
static __always_inline void note_bio(struct start *s, struct bio *bio, struct gendisk *disk,
				     __u64 cgroup, struct comm_words comm)
{
	__u32 opf = bio->bi_opf;
	__u32 bytes = bio->bi_iter.bi_size;

	s->dev = disk_dev_btf(disk);
	s->cgroup = cgroup;
	s->bytes = bytes;
	s->op = opf & 0xff; /* REQ_OP_MASK */
	s->flags = io_flags(opf, bytes);
	__builtin_memcpy(s->comm, &comm, sizeof(s->comm));
}

/* A raw tracepoint: the bio is only a key here; what it is is noted when
 * its submission ends (getrq or a merge, in the same task), or when it
 * completes on a bio-based device. As little as can be: it runs for every
 * bio. */
SEC("raw_tp/block_bio_queue")
int sub_bio_queue(__u64 *ctx)
{
	__u64 p = raw_arg(ctx, arg_bio_queue);
	struct start *s;
	__u64 id;

	if (!p)
		return 0;
	s = slot_claim(p);
	if (!s)
		return 0;
	id = bpf_get_current_pid_tgid();
	s->bio = 0; /* being written */
	s->ns = bpf_ktime_get_ns();
	s->pid = (__u32)id;
	s->tgid = id >> 32;
	s->dev = 0;
	s->state = ST_QUEUED;
	s->bio = p;
	return 0;
}

/* io_use_add counts a bio for its submitter on this CPU, with inflight ns
 * in flight; state ST_GOTRQ counts its request. */
static __always_inline void io_use_add(struct start *s, __u64 inflight)
{
	__u64 h = ((__u64)s->tgid << 32 | s->dev) ^ (s->cgroup * 0xff51afd7ed558ccdULL) ^
		  ((__u64)s->op << 8 | s->flags);
	__u32 mask = ((__u32)1 << (io_use_bits & 31)) - 1;
	__u32 i0 = (__u32)((h * 0x9E3779B97F4A7C15ULL) >> 32);
	__u32 zero = 0;
	void *table = bpf_map_lookup_elem(&io_use, &zero);

	if (!table) {
		lose(LOSS_MAP_FULL); /* no table swapped in yet */
		return;
	}
#pragma unroll
	for (int i = 0; i < IO_USE_PROBES; i++) {
		__u32 k = (i0 + i) & mask;
		struct io_use *u = bpf_map_lookup_elem(table, &k);

		if (!u)
			return;
		if (!u->used) {
			/* This CPU's copy: nothing else writes it meanwhile. */
			u->tgid = s->tgid;
			u->dev = s->dev;
			u->cgroup = s->cgroup;
			u->op = s->op;
			u->flags = s->flags;
			__builtin_memcpy(u->comm, s->comm, sizeof(u->comm));
			u->used = 1;
		} else if (u->tgid != s->tgid || u->dev != s->dev || u->cgroup != s->cgroup ||
			   u->op != s->op || u->flags != s->flags) {
			continue;
		}
		u->ios++;
		if (s->state == ST_GOTRQ)
			u->requests++;
		u->bytes += s->bytes;
		u->inflight_ns += inflight;
		return;
	}
	lose(LOSS_MAP_FULL);
}

static __always_inline int submit_end(struct bio *bio, __u32 end)
{
	__u64 p = ptr_bits(bio, rq_clock_get());
	struct start *sp;
	struct submit_event *e;
	struct gendisk *disk;
	__u64 now, lat, start, cgroup;
	__u32 dev, pid, tgid;

	if (!p)
		return 0;
	disk = bio_disk_cgroup_btf(bio, &cgroup);
	sp = slot_of(p);
	if (!sp && end == END_FRONTMERGE) {
		/* A bio not seen queued (the front part of a split) becomes
		 * a request's first bio: an entry leads its end on to the
		 * bio that got the request. */
		sp = slot_claim(p);
		if (sp) {
			sp->bio = 0; /* being written */
			sp->dev = 0;
			sp->state = ST_FRONT;
			sp->bio = p;
		}
		return 0;
	}
	if (!sp || sp->state != ST_QUEUED)
		return 0;
	now = bpf_ktime_get_ns();
	start = sp->ns;
	pid = sp->pid;
	tgid = sp->tgid;
	if (now < start) {
		sp->bio = 0;
		return 0;
	}
	lat = now - start;
	/* The end runs in the thread that queued the bio; should it not,
	 * user space names the submitter from its pid. */
	struct comm_words comm = submitter_comm(pid);
	note_bio(sp, bio, disk, cgroup, comm);
	if (end == END_GETRQ) {
		sp->state = ST_GOTRQ; /* counted when its request completes */
	} else {
		io_use_add(sp, lat);
		if (end == END_FRONTMERGE)
			sp->state = ST_FRONT; /* now its request's first bio */
		else
			sp->bio = 0;
	}

	dev = disk_dev_btf(disk);
	dev_hist_add(dev, disk, lat);
	if (!long_span(lat))
		return 0;

	e = EVENT_RESERVE(struct submit_event);
	if (!e)
		return 0;
	e->start_ns = start;
	e->latency_ns = lat;
	e->sector = BPF_CORE_READ(bio, bi_iter.bi_sector);
	e->pid = pid;
	e->tgid = tgid;
	e->dev = dev;
	e->opf = BPF_CORE_READ(bio, bi_opf);
	e->bytes = BPF_CORE_READ(bio, bi_iter.bi_size);
	e->end = end;
	__builtin_memcpy(e->comm, &comm, sizeof(e->comm));
	e->disk_name[0] = 0;
	if (disk)
		bpf_core_read_str(e->disk_name, sizeof(e->disk_name), &disk->disk_name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/block_getrq")
int sub_getrq(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_getrq), END_GETRQ);
}

SEC("tp_btf/block_bio_backmerge")
int sub_backmerge(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_backmerge), END_BACKMERGE);
}

SEC("tp_btf/block_bio_frontmerge")
int sub_frontmerge(__u64 *ctx)
{
	return submit_end(tp_arg(ctx, arg_frontmerge), END_FRONTMERGE);
}

/* io_done ends a bio's entry: counts it, in flight until now, and frees
 * the slot. */
static __always_inline void io_done(struct start *s, __u64 now)
{
	if (s->dev && now >= s->ns)
		io_use_add(s, now - s->ns);
	s->bio = 0;
}

/* How many bios merged in front of a request's first one end_rq_bios
 * follows; more are counted in SUB_LOSS_CHAIN. Front merges come from
 * writes submitted in descending order within a plug (or a scheduler's
 * queue): rare. Each step costs the verifier some 800 instructions of
 * both programs that end requests (32 steps: 7049 instead of 362, for
 * start-up), so a longer chain is counted rather than walked. */
#define FRONT_WALK 8

/* The link of a request's bios. */
struct bio___chain {
	struct bio *bi_next;
} __attribute__((preserve_access_index));

/* end_rq_bios counts the bio that got a request that ends (completes, or
 * is merged into another request and freed): the request's first bio, or
 * when bios were merged in front of it (block_bio_frontmerge makes each
 * the request's first, its entry ST_FRONT, counted at its merge), the one
 * the chain of those leads to through bi_next. Intact here: the kernel
 * traces the completion before it ends any bio, and a merge before it
 * appends the request's bios to the other's. */
static __always_inline void end_rq_bios(struct bio *bio, __u64 now, struct rq_clock *c)
{
	for (int i = 0; i < FRONT_WALK; i++) {
		__u64 p = ptr_bits(bio, c);
		struct start *s;

		if (!p)
			return;
		s = slot_of(p);
		if (!s)
			return;
		if (s->state == ST_GOTRQ) {
			io_done(s, now);
			return;
		}
		if (s->state != ST_FRONT)
			return;
		s->bio = 0;
		bio = ((struct bio___chain *)bio)->bi_next;
	}
	sub_lose(SUB_LOSS_CHAIN);
}

/* The program that runs next on block_rq_complete (index 0: the service
 * probe's, else the devfault probe's), or none: the tail call then falls
 * through. whyslow runs one program per I/O there, this one first while
 * it runs (probes/rqchain.go fills the slot): a program run costs its
 * dispatch (and, with bpf_stats, two clock reads) before it does
 * anything, a tail call a few instructions. */
HOOK_NEXT(rq_complete_next);

/* A request completes (the first of its partial completions): the bio
 * that got it is counted. The chain's one clock read: noted with the
 * request in rq_clock for the programs it tail-calls (see struct
 * rq_clock), and taken back when none runs. */
SEC("tp_btf/block_rq_complete")
int sub_rq_done(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_complete);
	struct rq_clock *c = rq_clock_get();
	__u64 now = bpf_ktime_get_ns();

	if (c) {
		c->now = now;
		ptr_put(&c->rq, rq, c);
	}
	end_rq_bios(rq->bio, now, c);
	bpf_tail_call_static(ctx, &rq_complete_next, 0);
	if (c)
		c->rq = 0;
	return 0;
}

/* A request is merged into another (attempt_merge, with a scheduler) and
 * freed without a completion of its own: the bio that got it is counted
 * now, in flight until the merge, as a bio merged into a request. */
SEC("tp_btf/block_rq_merge")
int sub_rq_merge(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_merge);

	end_rq_bios(rq->bio, bpf_ktime_get_ns(), rq_clock_get());
	return 0;
}

/* A bio of a bio-based device completes, or one that neither got a
 * request nor was merged (it failed early): what it is is noted now (its
 * size is still there: the bio-based drivers do not advance it), not who
 * queued it (this runs where it completes). */
SEC("tp_btf/block_bio_complete")
int sub_bio_done(__u64 *ctx)
{
	struct bio *bio = tp_arg(ctx, arg_bio_complete);
	__u64 p = ptr_bits(bio, rq_clock_get());
	struct gendisk *disk;
	struct start *s;
	__u64 cgroup;

	if (!p)
		return 0;
	disk = bio_disk_cgroup_btf(bio, &cgroup);
	s = slot_of(p);
	if (!s || s->state == ST_FRONT)
		return 0;
	/* One with a request completes here when its request was freed
	 * without completing (an error after block_getrq). */
	if (s->state == ST_QUEUED)
		note_bio(s, bio, disk, cgroup, submitter_comm(s->pid));
	io_done(s, bpf_ktime_get_ns());
	return 0;
}

//bpf2go: -type submit_end
