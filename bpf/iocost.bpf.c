/* iocost: what the iocost controller (blk-iocost) did, from its
 * tracepoints (classic tracepoint programs reading the records; their
 * layouts are the same on 5.10, 6.1, 6.12 and 6.18):
 *
 *   iocost:iocost_ioc_vrate_adj     a device's vrate (the rate its model's
 *                                   costs are paid at) at the end of a period
 *                                   when iocost was busy or adjusting it
 *   iocost:iocost_iocg_activate     a cgroup became active on a device: its
 *   iocost:iocost_iocg_idle         weight and share (hweight); 6.1+: went idle
 *   iocost:iocost_inuse_shortage    a cgroup needed more than its share
 *   iocost:iocost_iocg_forgive_debt a cgroup's debt (I/O issued over budget,
 *                                   paid back by delaying it) forgiven, with
 *                                   the debt and delay before and after
 *
 * They fire per period and per cgroup, never per bio: each is copied to the
 * ring as it is, and user space sums them. */
#include "common.h"
#include "events.h"

enum ioc_kind {
	IOC_VRATE = 1,
	IOC_ACTIVATE = 2,
	IOC_IDLE = 3,
	IOC_SHORTAGE = 4,
	IOC_FORGIVE = 5,
};

KEEP_TYPE(enum ioc_kind, ioc_kind_type);

/* --- tracepoint records (offsets from the tracefs format files) --- */

/* __data_loc fields: offset of the string in the record (low 16 bits) and
 * its length (high 16 bits). */

struct tp_ioc_vrate_adj {
	__u64 common;
	__u32 devname;
	__u32 pad;
	__u64 old_vrate;
	__u64 new_vrate;
	int busy_level;
	__u32 read_missed_ppm;
	__u32 write_missed_ppm;
	__u32 rq_wait_pct;
	int nr_lagging;
	int nr_shortages;
};

/* iocost_iocg_activate and iocost_iocg_idle */
struct tp_iocg_state {
	__u64 common;
	__u32 devname;
	__u32 cgroup;
	__u64 now;
	__u64 vnow;
	__u64 vrate;
	__u64 last_period;
	__u64 cur_period;
	__u64 vtime;
	__u32 weight;
	__u32 inuse;
	__u64 hweight_active;
	__u64 hweight_inuse;
};

/* iocost_inuse_shortage (and the other inuse events) */
struct tp_iocg_inuse {
	__u64 common;
	__u32 devname;
	__u32 cgroup;
	__u64 now;
	__u32 old_inuse;
	__u32 new_inuse;
	__u64 old_hweight_inuse;
	__u64 new_hweight_inuse;
};

struct tp_iocg_forgive_debt {
	__u64 common;
	__u32 devname;
	__u32 cgroup;
	__u64 now;
	__u64 vnow;
	__u32 usage_pct;
	__u32 pad;
	__u64 old_debt;
	__u64 new_debt;
	__u64 old_delay;
	__u64 new_delay;
};

/* --- the record on the ring: one for every kind, the fields of each
 * kind set, the others 0 --- */

#define IOC_CGROUP_LEN 128

struct ioc_event {
	enum ioc_kind kind;
	__s32 busy_level; /* vrate */
	__u64 time_ns;
	__u64 vrate; /* vrate: the new one; activate, idle: the current one */
	__u64 old_vrate; /* vrate */
	__u32 read_missed_ppm, write_missed_ppm, rq_wait_pct; /* vrate */
	__s32 nr_lagging, nr_shortages; /* vrate */
	__u32 weight, inuse; /* activate, idle; shortage: the new inuse */
	__u32 usage_pct; /* forgive */
	__u64 hweight_active, hweight_inuse; /* activate, idle; shortage: the new hweight_inuse */
	__u64 old_debt, new_debt, old_delay, new_delay; /* forgive */
	char dev[DISK_NAME_LEN];
	char cgroup[IOC_CGROUP_LEN];
};

KEEP_TYPE(struct ioc_event, ioc_event_type);

/* read_loc copies the __data_loc string at loc of record ctx to buf. */
static __always_inline void read_loc(void *ctx, __u32 loc, char *buf, __u32 size)
{
	if (bpf_probe_read_kernel_str(buf, size, ctx + (loc & 0xffff)) < 0)
		buf[0] = 0;
}

static __always_inline struct ioc_event *ioc_reserve(enum ioc_kind kind)
{
	struct ioc_event *e = EVENT_RESERVE(struct ioc_event);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e) - DISK_NAME_LEN - IOC_CGROUP_LEN);
	e->kind = kind;
	e->time_ns = bpf_ktime_get_ns();
	e->dev[0] = 0;
	e->cgroup[0] = 0;
	return e;
}

SEC("tracepoint/iocost/iocost_ioc_vrate_adj")
int ioc_vrate_adj(struct tp_ioc_vrate_adj *ctx)
{
	struct ioc_event *e = ioc_reserve(IOC_VRATE);
	if (!e)
		return 0;
	e->vrate = ctx->new_vrate;
	e->old_vrate = ctx->old_vrate;
	e->busy_level = ctx->busy_level;
	e->read_missed_ppm = ctx->read_missed_ppm;
	e->write_missed_ppm = ctx->write_missed_ppm;
	e->rq_wait_pct = ctx->rq_wait_pct;
	e->nr_lagging = ctx->nr_lagging;
	e->nr_shortages = ctx->nr_shortages;
	read_loc(ctx, ctx->devname, e->dev, sizeof(e->dev));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int iocg_state(struct tp_iocg_state *ctx, enum ioc_kind kind)
{
	struct ioc_event *e = ioc_reserve(kind);
	if (!e)
		return 0;
	e->vrate = ctx->vrate;
	e->weight = ctx->weight;
	e->inuse = ctx->inuse;
	e->hweight_active = ctx->hweight_active;
	e->hweight_inuse = ctx->hweight_inuse;
	read_loc(ctx, ctx->devname, e->dev, sizeof(e->dev));
	read_loc(ctx, ctx->cgroup, e->cgroup, sizeof(e->cgroup));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/iocost/iocost_iocg_activate")
int ioc_activate(struct tp_iocg_state *ctx)
{
	return iocg_state(ctx, IOC_ACTIVATE);
}

SEC("tracepoint/iocost/iocost_iocg_idle")
int ioc_idle(struct tp_iocg_state *ctx)
{
	return iocg_state(ctx, IOC_IDLE);
}

SEC("tracepoint/iocost/iocost_inuse_shortage")
int ioc_shortage(struct tp_iocg_inuse *ctx)
{
	struct ioc_event *e = ioc_reserve(IOC_SHORTAGE);
	if (!e)
		return 0;
	e->inuse = ctx->new_inuse;
	e->hweight_inuse = ctx->new_hweight_inuse;
	read_loc(ctx, ctx->devname, e->dev, sizeof(e->dev));
	read_loc(ctx, ctx->cgroup, e->cgroup, sizeof(e->cgroup));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/iocost/iocost_iocg_forgive_debt")
int ioc_forgive(struct tp_iocg_forgive_debt *ctx)
{
	struct ioc_event *e = ioc_reserve(IOC_FORGIVE);
	if (!e)
		return 0;
	e->usage_pct = ctx->usage_pct;
	e->old_debt = ctx->old_debt;
	e->new_debt = ctx->new_debt;
	e->old_delay = ctx->old_delay;
	e->new_delay = ctx->new_delay;
	read_loc(ctx, ctx->devname, e->dev, sizeof(e->dev));
	read_loc(ctx, ctx->cgroup, e->cgroup, sizeof(e->cgroup));
	bpf_ringbuf_submit(e, 0);
	return 0;
}
