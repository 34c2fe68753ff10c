/* submitfn: time spent in the bio submission function, per device and per
 * process: submit_bio_noacct (5.9+) or generic_make_request (before 5.9),
 * from entry to return. It holds the queue-enter wait of a frozen queue,
 * throttling, tag allocation and, for bio-based devices, the driver's own
 * submission (what the seed's kprobe script measured, slat in fio terms).
 *
 * Nested calls (a stacked driver resubmitting to a lower device) are counted
 * in the outermost call, on the outer bio's device. Every call goes into a
 * per-device histogram; calls of at least min_latency_ns are streamed with
 * the task. fentry/fexit or kprobe/kretprobe: user space loads only the
 * programs of the mechanism it chose (probes/submitfn.go). */
#include "common.h"
#include <asm/ptrace.h>
#include "hist.h"
#include "kernel_block.h"

DECLARE_LOSSES();

#include "devhist.h"

/* Set from user space before loading. */
volatile const __u64 min_latency_ns = 1000000;

#define MAX_SUBMITTING 16384
#define STALE_NS 10000000000ULL /* 10 s */

struct sf_start {
	__u64 ns;
	__u64 disk; /* struct gendisk * */
	__u32 dev;
	__u32 depth; /* nested calls inside the outermost one */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SUBMITTING);
	__type(key, __u32); /* tid */
	__type(value, struct sf_start);
} submitting SEC(".maps");

struct sf_event {
	__u64 start_ns;
	__u64 latency_ns;
	__u32 pid;
	__u32 tgid;
	__u32 dev; /* whole disk, major<<20|minor */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char disk_name[DISK_NAME_LEN];
};

/* Not used by the programs: makes bpf2go emit the Go type of the event. */
struct sf_event sf_event_type;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline int sf_enter(struct bio *bio)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sf_start *sp = bpf_map_lookup_elem(&submitting, &tid);
	struct sf_start s = {};
	struct gendisk *disk;

	s.ns = bpf_ktime_get_ns();
	/* A nested submission: the outer call times it. An entry older than
	 * STALE_NS is left over from a missed return (kretprobe instances
	 * exhausted) and is replaced. */
	if (sp && s.ns - sp->ns < STALE_NS) {
		sp->depth++;
		return 0;
	}
	disk = bio_disk(bio);
	s.disk = (__u64)disk;
	s.dev = disk_dev(disk);
	if (bpf_map_update_elem(&submitting, &tid, &s, BPF_ANY))
		count_loss(&losses, LOSS_MAP_FULL);
	return 0;
}

static __always_inline int sf_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sf_start *sp = bpf_map_lookup_elem(&submitting, &tid);
	struct gendisk *disk;
	struct sf_event *e;
	__u64 now, lat;
	__u32 dev;

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
	bpf_map_delete_elem(&submitting, &tid);
	if (!dev)
		return 0;
	dev_hist_add(dev, disk, lat);
	if (lat < min_latency_ns)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(&losses, LOSS_RINGBUF);
		return 0;
	}
	e->start_ns = now - lat;
	e->latency_ns = lat;
	e->pid = tid;
	e->tgid = id >> 32;
	e->dev = dev;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->disk_name[0] = 0;
	if (disk)
		bpf_core_read_str(e->disk_name, sizeof(e->disk_name), &disk->disk_name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* One program per mechanism and direction; user space points them at
 * submit_bio_noacct or generic_make_request (both take the bio first). */
SEC("fentry/submit_bio_noacct")
int BPF_PROG(sf_fentry, struct bio *bio)
{
	return sf_enter(bio);
}

SEC("fexit/submit_bio_noacct")
int BPF_PROG(sf_fexit, struct bio *bio)
{
	return sf_exit();
}

SEC("kprobe/submit_bio_noacct")
int BPF_KPROBE(sf_kprobe, struct bio *bio)
{
	return sf_enter(bio);
}

SEC("kretprobe/submit_bio_noacct")
int BPF_KRETPROBE(sf_kretprobe)
{
	return sf_exit();
}
