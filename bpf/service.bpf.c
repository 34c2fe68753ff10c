/* service: request service latency per device, block_rq_issue to
 * block_rq_complete (the time the driver and the device hold a request,
 * what biolatency and iostat's await-minus-queue report). Aggregated in the
 * kernel only: nothing is streamed.
 *
 * The kernel keeps the issue time itself where the queue collects I/O
 * statistics (QUEUE_FLAG_STATS: writeback throttling, on by default on
 * every blk-mq disk with CONFIG_BLK_WBT, and iocost, iolatency, hybrid
 * polling): blk_mq_start_request stamps rq->io_start_time_ns right after
 * block_rq_issue, for every request but drivers' passthrough ones (every
 * op before 6.x: passthrough ops are left to the slots here). There the
 * issue program returns at once and the completion reads the stamp; the
 * stamp is zeroed when a request is allocated. Elsewhere (a queue with
 * no statistics, a passthrough request) the issue time waits in a slot as
 * below. On 6.9+ the stamp is blk_time_get_ns: inside a task's plug, the
 * time the plug first read the clock (the first request's allocation,
 * say), so a request issued from a plug whose clock is read already
 * takes a slot too (the span starts at its issue, not earlier), and the
 * completion looks at the request's slot before its stamp. On 6.9+ that
 * is most requests a task issues (a plugged submission allocates its
 * request first), so there user space does not read the stamps at all
 * (use_stamps 0) and attaches svc_rq_issue_slot instead: the stamps are
 * for 5.10-6.8, where they save every issue's slot.
 *
 * A request that is requeued is issued again: the later issue overwrites
 * the start. block_rq_complete can fire several times for one request
 * (partial completions): with a slot the first one ends the span, with the
 * kernel's stamp the last one (nr_bytes covering what is left).
 *
 * The issue time waits in a direct-mapped slot by request pointer, which is
 * unique among requests in flight (each is its own object, until it is
 * completed and freed or reused). Two requests in flight can hash to one
 * slot: the second then waits in issued_spill, a hash by the same pointer,
 * so no span is lost to a collision; only a full spill loses one
 * (LOSS_MAP_FULL). The request's tag is no better key: it is unique only
 * within its tag set's hardware queue (or the host's, with shared tags),
 * so a key of tag, queue and device would need a hash too. A request never
 * completed (the device went away) keeps its slot until the same request
 * is issued again; requests hashed there meanwhile go to the spill. A
 * queue whose statistics are switched on while one of its requests waits
 * between a requeue and its next issue may leave that request's slot taken
 * the same way (its stamp ends its span).
 *
 * A request whose completion never reaches the probe keeps its slot until
 * the same request object is issued again: that issue counts it
 * (SVC_LOSS_MISSED, svc_losses). A requeue frees the slot first
 * (svc_rq_requeue), so a requeued request issued again is not counted.
 * Where the kernel's stamps are read, such a request leaves nothing
 * behind and is not counted.
 *
 * block_rq_complete: whyslow runs one program per I/O there. The submit
 * probe's program leads when it runs and tail-calls this one through its
 * rq_complete_next; this one tail-calls the devfault probe's through its
 * own (probes/rqchain.go fills the slots): a program run costs its
 * dispatch (and, with bpf_stats, two clock reads) before it does
 * anything, a tail call a few instructions. */
#include "common.h"
#include "hist.h"
#include "kernel_block.h"

/* 16384 slots x 16 B = 256 KB: far more than requests in flight. */
#define SLOT_BITS 14
#include "devhist.h"

/* Index of the request argument of each tracepoint (see tp_arg). */
volatile const __u32 arg_rq_issue = 0;
volatile const __u32 arg_rq_complete = 0;
volatile const __u32 arg_rq_requeue = 0;

/* 0: the kernel's issue stamps are not read, every issue time waits in a
 * slot (the tests' way to time the slots on a machine whose queues all
 * collect statistics). */
volatile const __u8 use_stamps = 1;

/* The service probe's own losses, beside the shared `losses`. Go:
 * serviceLossWhat. */
enum svc_loss_kind {
	SVC_LOSS_MISSED = 0, /* a request issued again while its slot still
			      * held its earlier issue: that issue's completion
			      * never reached the probe (a requeue frees the
			      * slot first, see svc_rq_requeue) */
	SVC_LOSS_KINDS = 1,
};

KEEP_TYPE(enum svc_loss_kind, svc_loss_kind_type);

LOSS_COUNTERS(svc_losses, SVC_LOSS_KINDS);

/* The program that runs next on block_rq_complete (index 0), or none: the
 * tail call then falls through. */
HOOK_NEXT(rq_complete_next);

struct issued {
	__u64 rq; /* struct request *, 0 when free */
	__u64 ns; /* issue time */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << SLOT_BITS);
	__type(key, __u32);
	__type(value, struct issued);
} issued SEC(".maps");

/* Requests in flight whose slot another request in flight held when they
 * were issued: request pointer -> issue time. A device's requests are a
 * fixed set of objects (its tags' or its scheduler's): only a pair of them
 * that share a slot collides, and only while both are in flight, so a few
 * thousand entries hold far more than every device's collisions at once. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} issued_spill SEC(".maps");

/* Completions the probe saw of requests never issued, per device (whole
 * disk dev_t -> count): a flush the block layer completes itself, without
 * issuing it to the driver, a request failed before its issue. With the
 * histograms' counts, the completions that reached the program on the
 * device, each once: user space compares that with the completions the
 * kernel counted in the device's statistics (probes/completions.go). Not
 * counted here: a request issued (its state no longer idle) whose span
 * ended already or never started, whose completion the kernel counts once
 * where it is traced twice (a write in a flush sequence: its data's
 * completion, then the sequence's end), or several times (partial
 * completions), or that was issued before the probe started (in flight
 * then: user space allows for those). Written on that path only, never
 * per I/O. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEV_MAX);
	__type(key, __u32);
	__type(value, __u64);
} unspanned SEC(".maps");

/* The state of a request (4.17+): MQ_RQ_IDLE until it is started. */
enum mq_rq_state {
	MQ_RQ_IDLE = 0,
	MQ_RQ_IN_FLIGHT = 1,
	MQ_RQ_COMPLETE = 2,
};

struct request___svc_state {
	enum mq_rq_state state;
} __attribute__((preserve_access_index));

/* count_unspanned counts a completion of rq without a span, when rq was
 * never issued. */
static __always_inline void count_unspanned(struct request *rq)
{
	if (((struct request___svc_state *)rq)->state != MQ_RQ_IDLE)
		return;
	__u32 dev = disk_dev_btf(request_disk_btf(rq));
	__u64 one = 1, *n = bpf_map_lookup_elem(&unspanned, &dev);

	if (!n) {
		long err = bpf_map_update_elem(&unspanned, &dev, &one, BPF_NOEXIST);

		if (!err)
			return;
		if (err != -WS_EEXIST) {
			lose(LOSS_MAP_FULL);
			return;
		}
		n = bpf_map_lookup_elem(&unspanned, &dev);
		if (!n)
			return;
	}
	__sync_fetch_and_add(n, 1);
}

/* The fields of the kernel's statistics this program reads. */
struct list_head___svc {
	struct list_head___svc *next;
} __attribute__((preserve_access_index));

/* block/blk-stat.h: QUEUE_FLAG_STATS is set exactly while callbacks is
 * not empty or accounting is on (blk_stat_add_callback,
 * blk_stat_enable_accounting and their undoing). The flag's number is a
 * macro up to 6.10 and a member of an anonymous enum from 6.11 on, which
 * no CO-RE relocation can name; these fields are found by name. */
struct blk_queue_stats {
	struct list_head___svc callbacks;
	int accounting; /* 5.16+ */
} __attribute__((preserve_access_index));

struct blk_queue_stats___old {
	_Bool enable_accounting; /* up to 5.15 */
} __attribute__((preserve_access_index));

struct request_queue___svc {
	struct blk_queue_stats *stats;
} __attribute__((preserve_access_index));

struct request___svc {
	__u64 io_start_time_ns;
} __attribute__((preserve_access_index));

/* 6.9+: the block layer's clock in a task's plug (blk_time_get_ns). Once
 * read in a plug, it is the time of every later stamp in that plug. */
struct blk_plug___svc {
	__u64 cur_ktime;
} __attribute__((preserve_access_index));

struct task_struct___svc {
	struct blk_plug___svc *plug;
} __attribute__((preserve_access_index));

/* The first passthrough op (REQ_OP_SCSI_IN up to 5.x, REQ_OP_DRV_IN after:
 * 32 and 34); ops are the low 8 bits of cmd_flags. */
#define SVC_OP_PASSTHROUGH 32

/* stamps_read says whether this program reads the kernel's stamp of
 * request rq, by its op alone: the completion's test. Only where
 * block_rq_complete's request is its first argument (5.10-6.18), so its
 * nr_bytes is the third. */
static __always_inline int stamps_read(struct request *rq)
{
	return use_stamps && arg_rq_complete == 0 && (rq->cmd_flags & 0xff) < SVC_OP_PASSTHROUGH;
}

/* kernel_stamps says whether the kernel stamps the issue of request rq
 * itself (blk_mq_start_request, right after block_rq_issue), where the
 * completion reads the stamp: the issue program's test. */
static __always_inline int kernel_stamps(struct request *rq)
{
	if (!stamps_read(rq))
		return 0;
	/* Where the issuing task's plug has read the clock already, the
	 * kernel's stamp would be that earlier time, not the issue's: a
	 * plugged batch's requests would share their first allocation's
	 * time. The slot then. */
	if (bpf_core_field_exists(struct blk_plug___svc, cur_ktime)) {
		struct task_struct___svc *t = (void *)bpf_get_current_task_btf();
		struct blk_plug___svc *plug = t->plug;
		if (plug && plug->cur_ktime)
			return 0;
	}
	struct request_queue___svc *q = (void *)rq->q;
	if (!q)
		return 0;
	struct blk_queue_stats *st = q->stats;
	if (!st)
		return 0;
	if ((void *)st->callbacks.next != (void *)&st->callbacks)
		return 1;
	if (bpf_core_field_exists(st->accounting))
		return st->accounting != 0;
	struct blk_queue_stats___old *old = (void *)st;
	if (bpf_core_field_exists(old->enable_accounting))
		return old->enable_accounting;
	return 0;
}

/* issue_into_slot notes now as the issue time of request rq (its
 * pointer's bits) in its slot, or in issued_spill when another request in
 * flight holds the slot. */
static __always_inline int issue_into_slot(__u64 rq)
{
	__u32 k = ptr_slot(rq);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);
	__u64 now;

	if (!rq || !s)
		return 0;
	now = bpf_ktime_get_ns();
	if (s->rq && s->rq != rq) {
		/* Another request in flight holds the slot. */
		if (bpf_map_update_elem(&issued_spill, &rq, &now, BPF_ANY))
			lose(LOSS_MAP_FULL);
		return 0;
	}
	if (s->rq == rq)
		count_loss(&svc_losses, SVC_LOSS_MISSED);
	s->ns = now;
	s->rq = rq;
	return 0;
}

/* The issue where the stamps are not read (use_stamps 0: chosen by user
 * space where plugs keep the block layer's clock, 6.9+, whose task-issued
 * requests take their slots anyway): a raw tracepoint, where the request
 * is only a key, with no helper call to read its pointer (ptr_bits). */
SEC("raw_tp/block_rq_issue")
int svc_rq_issue_slot(__u64 *ctx)
{
	return issue_into_slot(raw_arg(ctx, arg_rq_issue));
}

SEC("tp_btf/block_rq_issue")
int svc_rq_issue(__u64 *ctx)
{
	struct request *r = tp_arg(ctx, arg_rq_issue);

	if (!r || kernel_stamps(r))
		return 0;
	return issue_into_slot(ptr_bits(r, rq_clock_get()));
}

/* svc_end ends the span of request rq, completing (ctx: the tracepoint's
 * arguments). */
static __always_inline void svc_end(__u64 *ctx, struct request *rq)
{
	struct gendisk *disk;
	__u64 start, now = 0;

	if (!rq)
		return;
	struct rq_clock *c = rq_clock_get();
	__u64 p = ptr_bits(rq, c);
	/* The chain's clock, when its first program noted this request's
	 * completion (struct rq_clock); emptied, so that no later run takes
	 * it for another completion of the same request. */
	if (c) {
		if (c->rq == p)
			now = c->now;
		c->rq = 0;
	}
	__u32 k = ptr_slot(p);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);

	if (!s || !p)
		return;
	if (s->rq == p) {
		/* Issued into its slot (no statistics, a plug's clock). */
		start = s->ns;
		s->rq = 0;
	} else if (stamps_read(rq) && (start = ((struct request___svc *)rq)->io_start_time_ns)) {
		/* Stamped by the kernel: the completion that ends the
		 * request ends the span. */
		__u32 nr_bytes = (__u32)(__u64)tp_arg(ctx, 2);
		if (nr_bytes < rq->__data_len)
			return;
	} else {
		/* Issued while another held the slot, or never seen issued
		 * (before the probe started; a later partial completion). */
		__u64 *ns = bpf_map_lookup_elem(&issued_spill, &p);

		if (!ns) {
			count_unspanned(rq);
			return;
		}
		start = *ns;
		bpf_map_delete_elem(&issued_spill, &p);
	}
	/* Before the span's start: a time the chain noted for an earlier
	 * completion of the same request object, never taken back (a
	 * program on a link of its own runs before the chain). */
	if (now < start)
		now = bpf_ktime_get_ns();
	if (now < start) {
		count_unspanned(rq);
		return;
	}
	disk = request_disk_btf(rq);
	dev_hist_add(disk_dev_btf(disk), disk, now - start);
}

SEC("tp_btf/block_rq_complete")
int svc_rq_complete(__u64 *ctx)
{
	svc_end(ctx, tp_arg(ctx, arg_rq_complete));
	bpf_tail_call_static(ctx, &rq_complete_next, 0);
	return 0;
}

/* A request is requeued (the driver was busy, or it asked for it): it will
 * be issued again, and its span starts over then. Freeing its slot here
 * tells that issue from one whose earlier completion was missed. */
SEC("tp_btf/block_rq_requeue")
int svc_rq_requeue(__u64 *ctx)
{
	struct request *rq = tp_arg(ctx, arg_rq_requeue);
	__u64 p = ptr_bits(rq, rq_clock_get());
	__u32 k = ptr_slot(p);
	struct issued *s = bpf_map_lookup_elem(&issued, &k);

	if (!s || !p)
		return 0;
	if (s->rq == p)
		s->rq = 0;
	else
		bpf_map_delete_elem(&issued_spill, &p);
	return 0;
}
