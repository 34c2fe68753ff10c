/* devfault: failing devices. Requests that completed with an error
 * (block_rq_complete with a non-zero error: every kernel; block_rq_error,
 * 5.18+, fires at the same place) and requests that were requeued
 * (block_rq_requeue), those whose deadline had passed (a timeout: the
 * driver's error handler gave the request back to be issued again) told
 * apart. Errors and timeouts are streamed one by one; requeues are counted
 * per device.
 *
 * A timeout needs no driver tracepoint: the block layer armed the
 * request's deadline (jiffies) when it started it, and a request given
 * back while still in flight after its deadline was given back by the
 * timeout handling (SCSI: scsi_timeout, then the error handler's retry;
 * NVMe: nvme_timeout, abort or reset). A requeue for want of resources
 * (BLK_STS_RESOURCE) comes long before the deadline.
 *
 * SCSI's error handling, where scsi_mod is loaded (classic tracepoints:
 * 5.10 has no module BTF): scsi:scsi_dispatch_cmd_timeout (a command timed
 * out: its host, channel, target, LUN and opcode) and scsi:scsi_eh_wakeup
 * (the host's error handler woken to recover its failed commands: aborts,
 * then device, target, bus and host resets). Both are rare; the per-command
 * SCSI and NVMe tracepoints are not used (one per I/O). */
#include "common.h"
#include "events.h"
#include "kernel_block.h"

/* Index of the request argument of each tracepoint (see tp_arg): the block
 * tracepoints lost their request_queue argument in 5.11. The error of
 * block_rq_complete is the next one. */
volatile const __u32 arg_rq_complete = 0;
volatile const __u32 arg_rq_requeue = 0;

/* The state of a request (4.17+). */
enum mq_rq_state {
	MQ_RQ_IDLE = 0,
	MQ_RQ_IN_FLIGHT = 1,
	MQ_RQ_COMPLETE = 2,
};

/* The request fields this program reads beyond kernel_block.h's. */
struct request___df {
	unsigned int cmd_flags;
	sector_t __sector;
	unsigned int __data_len;
	unsigned long deadline; /* jiffies: when it times out (armed at its start) */
	__u64 start_time_ns; /* allocated (0 when not stamped) */
	__u64 io_start_time_ns; /* started (issued to the driver; 0 when not stamped) */
	enum mq_rq_state state;
} __attribute__((preserve_access_index));

/* Record kinds on the ring buffer. */
enum df_kind {
	DF_ERROR = 1, /* a request completed with an error */
	DF_TIMEOUT = 2, /* a request given back after its deadline */
	DF_SCSI_TIMEOUT = 3, /* a SCSI command timed out (scsi_dispatch_cmd_timeout) */
	DF_SCSI_EH = 4, /* a SCSI host's error handler woken (scsi_eh_wakeup) */
};

KEEP_TYPE(enum df_kind, df_kind_type);

struct df_event {
	__u32 kind; /* enum df_kind */
	__u32 dev;
	__u64 time_ns;
	__u64 sector;
	__u64 started_ns; /* when the request was started, else allocated; 0: unknown */
	__s32 error; /* DF_ERROR: a -errno (up to 5.16), or a blk_status_t (>0, 5.17+) */
	__u32 bytes;
	__u32 cmd_flags;
	__u32 timed_out; /* its deadline had passed */
	char disk[DISK_NAME_LEN];
};

KEEP_TYPE(struct df_event, df_event_type);

/* DF_SCSI_TIMEOUT, DF_SCSI_EH: the SCSI device by its address (the host
 * alone for DF_SCSI_EH); user space finds its disk in sysfs. */
struct df_scsi_event {
	__u32 kind;
	__u32 host_no;
	__u64 time_ns;
	__u32 channel, id, lun;
	__u32 opcode; /* DF_SCSI_TIMEOUT: the command's first byte */
};

KEEP_TYPE(struct df_scsi_event, df_scsi_event_type);

/* tracepoint records (offsets from the tracefs format files: the same on
 * 5.10, 6.1 and 6.12) */
struct tp_scsi_eh_wakeup {
	__u64 common;
	__u32 host_no;
};

struct tp_scsi_cmd_timeout {
	__u64 common;
	__u32 host_no;
	__u32 channel;
	__u32 id;
	__u32 lun;
	int result;
	__u32 opcode;
};

/* Requeues per device. */
#define MAX_DEVS 1024

struct df_requeues {
	__u64 count;
	__u64 timed_out;
	char disk[DISK_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DEVS);
	__type(key, __u32); /* dev */
	__type(value, struct df_requeues);
} requeues SEC(".maps");

KEEP_TYPE(struct df_requeues, df_requeues_type);

/* df_arg returns argument idx (0..2) of a tp_btf program, idx a constant
 * set from user space (the loads in assembly, as devhist.h's tp_arg, whose
 * header brings maps this program has no use for). */
static __always_inline __u64 df_arg(__u64 *ctx, __u32 idx)
{
	__u64 v;

	if (idx == 1)
		asm volatile("%0 = *(u64 *)(%1 + 8)" : "=r"(v) : "r"(ctx));
	else if (idx == 2)
		asm volatile("%0 = *(u64 *)(%1 + 16)" : "=r"(v) : "r"(ctx));
	else
		asm volatile("%0 = *(u64 *)(%1 + 0)" : "=r"(v) : "r"(ctx));
	return v;
}

static __always_inline __u32 rq_timed_out(struct request___df *r)
{
	if (r->state == MQ_RQ_IDLE)
		return 0;
	/* time_after_eq(jiffies, deadline) */
	return (long)(bpf_jiffies64() - r->deadline) >= 0;
}

/* fill fills an event of request r, for disk (request_disk_btf). */
static __always_inline void fill(struct df_event *e, struct gendisk *disk, struct request___df *r, __u32 kind)
{
	e->kind = kind;
	e->dev = disk_dev_btf(disk);
	e->time_ns = bpf_ktime_get_ns();
	e->sector = r->__sector;
	e->started_ns = r->io_start_time_ns ? r->io_start_time_ns : r->start_time_ns;
	e->error = 0;
	e->bytes = r->__data_len;
	e->cmd_flags = r->cmd_flags;
	e->timed_out = rq_timed_out(r);
	e->disk[0] = 0;
	if (disk)
		bpf_probe_read_kernel_str(e->disk, sizeof(e->disk), disk->disk_name);
}

/* Operations at or above REQ_OP_DRV_IN (34; 5.10: REQ_OP_SCSI_IN, 32) are
 * passthrough commands (SG_IO, ioctls): their errors are the command's
 * answer, not the device failing (block_rq_error leaves them out too). */
#define DF_OP_PASSTHROUGH 32

/* Tail-called from the service or the submit probe's program on
 * block_rq_complete while one of them runs (probes/rqchain.go), else
 * attached on its own: the last of whyslow's programs there. */
SEC("tp_btf/block_rq_complete")
int df_rq_complete(__u64 *ctx)
{
	struct request *rq = (void *)df_arg(ctx, arg_rq_complete);
	__s32 error = (__s32)df_arg(ctx, arg_rq_complete + 1);
	struct request___df *r = (void *)rq;

	if (!rq)
		return 0;
	/* blk_status_t is a u8: only its low byte is the argument's. */
	if (error > 0)
		error &= 0xff;
	if (!error || (r->cmd_flags & 0xff) >= DF_OP_PASSTHROUGH)
		return 0;
	struct df_event *e = EVENT_RESERVE(struct df_event);
	if (!e)
		return 0;
	fill(e, request_disk_btf(rq), r, DF_ERROR);
	e->error = error;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/block_rq_requeue")
int df_rq_requeue(__u64 *ctx)
{
	struct request *rq = (void *)df_arg(ctx, arg_rq_requeue);
	struct request___df *r = (void *)rq;

	if (!rq)
		return 0;
	/* The request's disk first, on the verifier's one path: each load of
	 * a pointer field through the (trusted) argument makes 6.x's verifier
	 * search the kernel BTF by name, once for every path that reaches it
	 * (see bio_disk_cgroup_btf). */
	struct gendisk *disk = request_disk_btf(rq);
	asm volatile("" : "+r"(disk));
	__u32 timed_out = rq_timed_out(r);
	__u32 dev = disk_dev_btf(disk);
	struct df_requeues *n = bpf_map_lookup_elem(&requeues, &dev);
	if (!n) {
		struct df_requeues z = {};
		if (disk)
			bpf_probe_read_kernel_str(z.disk, sizeof(z.disk), disk->disk_name);
		bpf_map_update_elem(&requeues, &dev, &z, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&requeues, &dev);
	}
	if (n) {
		__sync_fetch_and_add(&n->count, 1);
		if (timed_out)
			__sync_fetch_and_add(&n->timed_out, 1);
	} else {
		lose(LOSS_MAP_FULL);
	}
	if (!timed_out)
		return 0;
	struct df_event *e = EVENT_RESERVE(struct df_event);
	if (!e)
		return 0;
	fill(e, disk, r, DF_TIMEOUT);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/scsi/scsi_dispatch_cmd_timeout")
int df_scsi_timeout(struct tp_scsi_cmd_timeout *ctx)
{
	struct df_scsi_event *e = EVENT_RESERVE(struct df_scsi_event);
	if (!e)
		return 0;
	e->kind = DF_SCSI_TIMEOUT;
	e->host_no = ctx->host_no;
	e->time_ns = bpf_ktime_get_ns();
	e->channel = ctx->channel;
	e->id = ctx->id;
	e->lun = ctx->lun;
	e->opcode = ctx->opcode;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/scsi/scsi_eh_wakeup")
int df_scsi_eh(struct tp_scsi_eh_wakeup *ctx)
{
	struct df_scsi_event *e = EVENT_RESERVE(struct df_scsi_event);
	if (!e)
		return 0;
	e->kind = DF_SCSI_EH;
	e->host_no = ctx->host_no;
	e->time_ns = bpf_ktime_get_ns();
	e->channel = 0;
	e->id = 0;
	e->lun = 0;
	e->opcode = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
