/* submitfn: time spent in the bio submission function, per device and per
 * process: submit_bio_noacct (5.9+) or generic_make_request (before 5.9),
 * from entry to return. It holds the queue-enter wait of a frozen queue,
 * throttling, tag allocation and, for bio-based devices, the driver's own
 * submission (what the seed's kprobe script measured, slat in fio terms).
 *
 * A stacked driver (bcache, dm, md) resubmits to its lower devices from
 * inside the outer call: those nested calls only queue the bio on the
 * thread's bio list, and the outer call submits it after the driver
 * returns. So the outer call is timed on the outer device, entry to return
 * (everything the submitter waited for), and each nested call on its own
 * device: from when it was queued, or when the previous bio of the thread
 * was done if later, to when its own submission (__submit_bio, else
 * blk_mq_submit_bio) returned. A lower device's frozen queue then shows on
 * the lower device, and on the outer one.
 *
 * Every call goes into a per-device histogram; calls of at least
 * min_latency_ns are streamed with the task. fentry/fexit or
 * kprobe/kretprobe: user space loads only the programs of the mechanism it
 * chose (probes/submitfn.go), and those of the per-bio function only where
 * the kernel has one. */
#include "common.h"
#include <asm/ptrace.h>
#include "events.h"
#include "hist.h"
#include "kernel_block.h"
#include "spans.h"
#include "devhist.h"

#define MAX_SUBMITTING 16384
#define STALE_NS 10000000000ULL /* 10 s */

/* Set by user space on fentry where the kernel has task storage (5.11+):
 * each thread's call then lives in its task's local storage, found from
 * the task in a few loads, instead of an LRU hash entry made and deleted on
 * every call under the map's locks. The other path is verified away. */
volatile const __u32 use_task_storage = 0;

struct sf_start {
	__u64 ns; /* when the outermost call started; 0: none (task storage) */
	__u64 disk; /* struct gendisk * */
	__u32 dev;
	__u32 depth; /* nested calls inside the outermost one */
	__u64 mark; /* when the thread's last bio submission ended (or ns) */
	__u64 bio; /* the bio in the per-bio function (kprobe: for its return) */
	__u32 queued; /* nested bios queued in this call and not yet done */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SUBMITTING);
	__type(key, __u32); /* tid */
	__type(value, struct sf_start);
} submitting SEC(".maps");

/* Where the kernel has no task storage, user space makes this a one-entry
 * hash map, never used. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sf_start);
} submitting_task SEC(".maps");

/* sf_tid is the current thread's id. */
static __always_inline __u32 sf_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

/* sf_call is the thread's call in progress, or NULL; with create, the task
 * storage it can be written to (NULL when that fails). On task storage the
 * thread id is not needed (no helper call for it on every bio); on the LRU
 * hash it is stored in *tid, the map's key. */
static __always_inline struct sf_start *sf_call(int create, __u32 *tid)
{
	struct sf_start *sp;

	if (use_task_storage) {
		sp = bpf_task_storage_get(&submitting_task, bpf_get_current_task_btf(), 0,
					  create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
		if (!create && sp && !sp->ns)
			return 0;
		return sp;
	}
	*tid = sf_tid();
	return bpf_map_lookup_elem(&submitting, tid);
}

/* A nested call's bio, queued on the thread's bio list: when, and for
 * which device. */
struct sf_nested {
	__u64 ns;
	__u64 disk;
	__u32 dev;
	__u32 tid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SUBMITTING);
	__type(key, __u64); /* struct bio * */
	__type(value, struct sf_nested);
} nested SEC(".maps");

/* Losses of this probe beyond `losses`. Go: submitFnLossWhat. */
enum sf_loss_kind {
	/* A nested call's bio not timed on its own device: the per-bio
	 * program was not attached yet (a stacked device appeared) or its bio
	 * was not seen; its time counts in the outer call only. */
	SF_LOSS_NESTED = 0,
	SF_LOSS_KINDS = 1,
};

KEEP_TYPE(enum sf_loss_kind, sf_loss_kind_type);

LOSS_COUNTERS(sf_losses, SF_LOSS_KINDS);

/* [SF_CTL_ON] is set by user space to 1 while the per-bio program is
 * attached: it attaches it while a stacked device exists or can appear (a
 * bio-based device, a stacking driver loaded), and when a nested call
 * shows it is needed. [SF_CTL_NOTICED] is 1 once that notice is sent; user
 * space clears both when it detaches the program. */
enum sf_ctl {
	SF_CTL_ON = 0,
	SF_CTL_NOTICED = 1,
	SF_CTL_KINDS = 2,
};

KEEP_TYPE(enum sf_ctl, sf_ctl_type);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_CTL_KINDS);
	__type(key, __u32);
	__type(value, __u32);
} bio_prog_on SEC(".maps");

/* A record whose dev is 0 and pad SF_NESTED_SEEN: a nested call while the
 * per-bio program was off (one until user space clears SF_CTL_NOTICED). */
#define SF_NESTED_SEEN 1

struct sf_event {
	__u64 start_ns;
	__u64 latency_ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor; 0: a notice (pad) */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

KEEP_TYPE(struct sf_event, sf_event_type);

/* sf_emit records one call of lat ns that started at start on dev. */
static __always_inline void sf_emit(__u32 dev, struct gendisk *disk, __u64 start, __u64 lat)
{
	struct sf_event *e;
	__u64 id;

	dev_hist_add(dev, disk, lat);
	if (!long_span(lat))
		return;
	e = EVENT_RESERVE(struct sf_event);
	if (!e)
		return;
	id = bpf_get_current_pid_tgid();
	e->start_ns = start;
	e->latency_ns = lat;
	e->pid = (__u32)id;
	e->tgid = id >> 32;
	e->dev = dev;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->disk_name[0] = 0;
	if (disk)
		bpf_core_read_str(e->disk_name, sizeof(e->disk_name), &disk->disk_name);
	bpf_ringbuf_submit(e, 0);
}

/* sf_bio_prog_on tells whether the per-bio program is attached. */
static __always_inline int sf_bio_prog_on(void)
{
	__u32 k_on = SF_CTL_ON;
	__u32 *on = bpf_map_lookup_elem(&bio_prog_on, &k_on);

	return on && *on;
}

/* sf_need_bio_prog tells user space, once, that a nested call came while
 * the per-bio program was off. */
static __always_inline void sf_need_bio_prog(void)
{
	__u32 k_noticed = SF_CTL_NOTICED;
	__u32 *noticed = bpf_map_lookup_elem(&bio_prog_on, &k_noticed);
	struct sf_event *e;

	if (!noticed || *noticed)
		return;
	e = EVENT_RESERVE(struct sf_event);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->pad = SF_NESTED_SEEN;
	bpf_ringbuf_submit(e, 0);
	*noticed = 1;
}

/* sf_enter: btf is 1 in the fentry program, whose bio is a typed pointer:
 * the bio's disk and its number are then read with plain loads instead of
 * four bpf_probe_read_kernel calls (the kprobe's bio is a bare number). */
static __always_inline int sf_enter(struct bio *bio, int btf)
{
	__u32 dev, tid = 0;
	struct sf_start *sp = sf_call(1, &tid);
	struct sf_start s = {};
	struct gendisk *disk;

	s.ns = bpf_ktime_get_ns();
	if (btf) {
		disk = bio_disk_btf(bio);
		dev = disk_dev_btf(disk);
	} else {
		disk = bio_disk(bio);
		dev = disk_dev(disk);
	}
	/* A nested submission: the outer call times itself, and the bio is
	 * timed on its own device when its turn comes (sf_bio_done). An entry
	 * older than STALE_NS is left over from a missed return (kretprobe
	 * instances exhausted) and is replaced. */
	if (sp && sp->ns && s.ns - sp->ns < STALE_NS) {
		struct sf_nested n = {.ns = s.ns, .disk = (__u64)disk, .dev = dev, .tid = sf_tid()};
		__u64 key = (__u64)bio;

		sp->depth++;
		if (!n.dev)
			return 0;
		/* With the per-bio program off, a nested call on the outer
		 * call's own device (the rest of a split bio) is timed in the
		 * outer call, on that device: nothing to wait for. Any other
		 * is a stacked device's: user space is told to attach it. */
		if (!sf_bio_prog_on()) {
			if (n.disk == sp->disk)
				return 0;
			sf_need_bio_prog();
		}
		if (bpf_map_update_elem(&nested, &key, &n, BPF_ANY))
			lose(LOSS_MAP_FULL);
		else
			sp->queued++;
		return 0;
	}
	s.disk = (__u64)disk;
	s.dev = dev;
	s.mark = s.ns;
	if (use_task_storage) {
		if (sp)
			*sp = s;
		else
			lose(LOSS_MAP_FULL);
		return 0;
	}
	if (bpf_map_update_elem(&submitting, &tid, &s, BPF_ANY))
		lose(LOSS_MAP_FULL);
	return 0;
}

static __always_inline int sf_exit(void)
{
	__u32 dev, tid = 0;
	struct sf_start *sp = sf_call(0, &tid);
	struct gendisk *disk;
	__u64 now, lat;

	if (!sp)
		return 0;
	if (sp->depth > 0) {
		sp->depth--;
		return 0;
	}
	now = bpf_ktime_get_ns();
	disk = (struct gendisk *)sp->disk;
	dev = sp->dev;
	lat = now >= sp->ns ? now - sp->ns : 0;
	/* Nested bios still queued at the outer call's return were not timed
	 * on their own device. */
	if (sp->queued) {
		__u32 kind = SF_LOSS_NESTED;
		__u64 *v = bpf_map_lookup_elem(&sf_losses, &kind);

		if (v)
			*v += sp->queued;
		sp->queued = 0;
	}
	if (use_task_storage)
		sp->ns = 0;
	else
		bpf_map_delete_elem(&submitting, &tid);
	if (dev)
		sf_emit(dev, disk, now - lat, lat);
	return 0;
}

/* sf_bio_done: the submission of one bio (the per-bio function) returned
 * inside an outer call. A nested call's bio is timed on its own device:
 * from when it was queued, or from the end of the bio submitted before it
 * if later (it waited for that one, not for its own device, meanwhile). */
static __always_inline int sf_bio_done(__u64 bio)
{
	__u32 tid = 0;
	struct sf_start *sp = sf_call(0, &tid);
	struct sf_nested *n;
	__u64 now, prev, start;

	/* With no nested bio waiting, the end of this one is no later bio's
	 * start (each is queued after it), and there is nothing to time: the
	 * case of every device that is not stacked. */
	if (!sp || !sp->queued)
		return 0;
	now = bpf_ktime_get_ns();
	prev = sp->mark;
	sp->mark = now;
	n = bpf_map_lookup_elem(&nested, &bio);
	if (!n)
		return 0;
	if (use_task_storage)
		tid = sf_tid();
	/* Queued by this thread in this outer call: else the bio pointer is
	 * a reused one whose entry was left over. */
	if (n->tid != tid || n->ns < sp->ns || n->ns > now) {
		bpf_map_delete_elem(&nested, &bio);
		return 0;
	}
	sp->queued--;
	start = n->ns > prev ? n->ns : prev;
	sf_emit(n->dev, (struct gendisk *)n->disk, start, now - start);
	bpf_map_delete_elem(&nested, &bio);
	return 0;
}

/* One program per mechanism and direction; user space points them at
 * submit_bio_noacct or generic_make_request (both take the bio first). */
SEC("fentry/submit_bio_noacct")
int BPF_PROG(sf_fentry, struct bio *bio)
{
	return sf_enter(bio, 1);
}

SEC("fexit/submit_bio_noacct")
int BPF_PROG(sf_fexit, struct bio *bio)
{
	return sf_exit();
}

SEC("kprobe/submit_bio_noacct")
int BPF_KPROBE(sf_kprobe, struct bio *bio)
{
	return sf_enter(bio, 0);
}

SEC("kretprobe/submit_bio_noacct")
int BPF_KRETPROBE(sf_kretprobe)
{
	return sf_exit();
}

/* The per-bio submission function, __submit_bio (6.x) or
 * blk_mq_submit_bio: user space points these at the one the kernel has. */
SEC("fexit/__submit_bio")
int BPF_PROG(sf_bio_fexit, struct bio *bio)
{
	return sf_bio_done((__u64)bio);
}

SEC("kprobe/__submit_bio")
int BPF_KPROBE(sf_bio_kprobe, struct bio *bio)
{
	__u32 tid = 0;
	struct sf_start *sp = sf_call(0, &tid);

	if (sp)
		sp->bio = (__u64)bio;
	return 0;
}

SEC("kretprobe/__submit_bio")
int BPF_KRETPROBE(sf_bio_kretprobe)
{
	__u32 tid = 0;
	struct sf_start *sp = sf_call(0, &tid);

	if (!sp)
		return 0;
	return sf_bio_done(sp->bio);
}
