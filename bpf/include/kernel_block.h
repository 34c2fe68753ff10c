/* Minimal CO-RE definitions of the block layer types whyslow reads.
 *
 * Only the fields the programs use are listed; preserve_access_index makes
 * every access a relocation that is matched by name against the running
 * kernel's BTF at load time, so offsets and the rest of each struct do not
 * matter. Types with a ___old suffix describe fields that existed only on
 * older kernels; programs test them with bpf_core_field_exists. */
#ifndef WHYSLOW_KERNEL_BLOCK_H
#define WHYSLOW_KERNEL_BLOCK_H

typedef __u64 sector_t;
typedef __u32 dev_t;

struct gendisk {
	int major;
	int first_minor;
	char disk_name[32];
} __attribute__((preserve_access_index));

struct block_device {
	dev_t bd_dev;
	struct gendisk *bd_disk;
	__u8 bd_partno;
} __attribute__((preserve_access_index));

struct bvec_iter {
	sector_t bi_sector;
	unsigned int bi_size;
} __attribute__((preserve_access_index));

/* The chain from a bio to the cgroup its I/O is charged to (the blkcg:
 * the submitter's, or for writeback the owner of the pages), named by its
 * kernfs node id, the inode number of the cgroup's directory (5.5+). */
struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct blkcg {
	struct cgroup_subsys_state css;
} __attribute__((preserve_access_index));

struct blkcg_gq {
	struct blkcg *blkcg;
} __attribute__((preserve_access_index));

/* 5.12+: bi_bdev (may be a partition; bi_bdev->bd_disk is the whole disk).
 * bi_blkg only with CONFIG_BLK_CGROUP. */
struct bio {
	struct block_device *bi_bdev;
	unsigned int bi_opf;
	struct bvec_iter bi_iter;
	struct blkcg_gq *bi_blkg;
} __attribute__((preserve_access_index));

/* Up to 5.11: the disk hangs directly off the bio. */
struct bio___old {
	struct gendisk *bi_disk;
	__u8 bi_partno;
} __attribute__((preserve_access_index));

struct kobject {
	const char *name;
	struct kobject *parent;
} __attribute__((preserve_access_index));

/* The driver-model device a gendisk (5.x) or its part0 embeds. */
struct device {
	struct kobject kobj;
	dev_t devt;
} __attribute__((preserve_access_index));

struct backing_dev_info {
	struct device *owner; /* the disk's device, up to 5.14 at least */
} __attribute__((preserve_access_index));

struct request_queue {
	struct gendisk *disk; /* 5.15+ */
	struct kobject kobj; /* "queue", child of the disk's device kobject */
	struct backing_dev_info *backing_dev_info; /* up to 5.14 */
	int mq_freeze_depth; /* int since 5.2 */
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} atomic_t;

/* 4.15-4.19: the freeze depth was an atomic_t. */
struct request_queue___old {
	atomic_t mq_freeze_depth;
} __attribute__((preserve_access_index));

struct request {
	struct request_queue *q;
	struct bio *bio;
	struct block_device *part;
	sector_t __sector;
	unsigned int __data_len;
	unsigned int cmd_flags;
} __attribute__((preserve_access_index));

/* Up to 5.15: the request names its disk. */
struct request___old {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

/* The whole disk a bio is for, on any kernel. */
static __always_inline struct gendisk *bio_disk(struct bio *bio)
{
	if (bpf_core_field_exists(bio->bi_bdev)) {
		struct block_device *bdev = BPF_CORE_READ(bio, bi_bdev);
		return bdev ? BPF_CORE_READ(bdev, bd_disk) : 0;
	}
	struct bio___old *old = (void *)bio;
	if (bpf_core_field_exists(old->bi_disk))
		return BPF_CORE_READ(old, bi_disk);
	return 0;
}

/* The whole disk a request is for, on any kernel. */
static __always_inline struct gendisk *request_disk(struct request *rq)
{
	struct request___old *old = (void *)rq;
	if (bpf_core_field_exists(old->rq_disk))
		return BPF_CORE_READ(old, rq_disk);
	if (bpf_core_field_exists(struct request_queue, disk)) {
		struct request_queue *q = BPF_CORE_READ(rq, q);
		return q ? BPF_CORE_READ(q, disk) : 0;
	}
	return 0;
}

/* The same three for tp_btf programs, whose bio and request arguments are
 * typed kernel pointers: plain loads (relocated like BPF_CORE_READ, checked
 * by the verifier against the kernel's BTF) instead of one probe-read
 * helper call per field. kprobe programs must use the ones above. */
static __always_inline struct gendisk *bio_disk_btf(struct bio *bio)
{
	if (bpf_core_field_exists(bio->bi_bdev)) {
		struct block_device *bdev = bio->bi_bdev;
		return bdev ? bdev->bd_disk : 0;
	}
	struct bio___old *old = (void *)bio;
	if (bpf_core_field_exists(old->bi_disk))
		return old->bi_disk;
	return 0;
}

static __always_inline struct gendisk *request_disk_btf(struct request *rq)
{
	struct request___old *old = (void *)rq;
	if (bpf_core_field_exists(old->rq_disk))
		return old->rq_disk;
	if (bpf_core_field_exists(struct request_queue, disk)) {
		struct request_queue *q = rq->q;
		return q ? q->disk : 0;
	}
	return 0;
}

/* bio_cgroup_btf returns the kernfs id of the cgroup a bio is charged to,
 * 0 when the kernel has no block cgroups or the bio none. */
static __always_inline __u64 bio_cgroup_btf(struct bio *bio)
{
	if (!bpf_core_field_exists(bio->bi_blkg))
		return 0;
	struct blkcg_gq *blkg = bio->bi_blkg;
	if (!blkg)
		return 0;
	struct blkcg *blkcg = blkg->blkcg;
	if (!blkcg)
		return 0;
	struct cgroup *cgrp = blkcg->css.cgroup;
	if (!cgrp)
		return 0;
	struct kernfs_node *kn = cgrp->kn;
	return kn ? kn->id : 0;
}

static __always_inline __u32 disk_dev_btf(struct gendisk *disk)
{
	if (!disk)
		return 0;
	return ((__u32)disk->major << 20) | ((__u32)disk->first_minor & 0xfffff);
}

/* queue_freeze_depth reads q->mq_freeze_depth on any kernel; -1 when the
 * field is unknown. */
static __always_inline int queue_freeze_depth(struct request_queue *q)
{
	if (bpf_core_field_exists(q->mq_freeze_depth))
		return BPF_CORE_READ(q, mq_freeze_depth);
	struct request_queue___old *old = (void *)q;
	if (bpf_core_field_exists(old->mq_freeze_depth))
		return BPF_CORE_READ(old, mq_freeze_depth.counter);
	return -1;
}

/* Kernel-internal dev_t of a disk: MKDEV(major, first_minor) = major<<20|minor. */
static __always_inline __u32 disk_dev(struct gendisk *disk)
{
	if (!disk)
		return 0;
	__u32 major = BPF_CORE_READ(disk, major);
	__u32 minor = BPF_CORE_READ(disk, first_minor);
	return (major << 20) | (minor & 0xfffff);
}

/* queue_dev returns the kernel dev_t of the disk a request queue belongs
 * to and copies its name into name (DISK_NAME_LEN bytes): through q->disk
 * on 5.15+, else through the disk's driver-model device, the parent of the
 * queue's kobject or, failing that, the owner of its backing_dev_info.
 * Returns 0 (and an empty name) when neither is known. */
static __always_inline __u32 queue_dev(struct request_queue *q, char *name)
{
	struct kobject *parent = 0;
	struct device *dev = 0;

	name[0] = 0;
	if (!q)
		return 0;
	if (bpf_core_field_exists(q->disk)) {
		struct gendisk *disk = BPF_CORE_READ(q, disk);
		if (disk) {
			bpf_core_read_str(name, DISK_NAME_LEN, &disk->disk_name);
			return disk_dev(disk);
		}
	}
	if (bpf_core_field_exists(q->kobj))
		parent = BPF_CORE_READ(q, kobj.parent);
	if (parent)
		dev = (void *)parent - bpf_core_field_offset(struct device, kobj);
	else if (bpf_core_field_exists(q->backing_dev_info)) {
		struct backing_dev_info *bdi = BPF_CORE_READ(q, backing_dev_info);
		if (bdi)
			dev = BPF_CORE_READ(bdi, owner);
	}
	if (!dev)
		return 0;
	const char *kname = BPF_CORE_READ(dev, kobj.name);
	if (kname)
		bpf_probe_read_kernel_str(name, DISK_NAME_LEN, kname);
	return BPF_CORE_READ(dev, devt);
}

#endif
