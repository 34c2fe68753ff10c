/* Minimal CO-RE definitions of the file types whyslow reads to tell which
 * block device a file descriptor leads to (syscall.bpf.c). Include after
 * kernel_block.h and kernel_sched.h.
 *
 * Only the fields the programs use are listed; preserve_access_index makes
 * every access a relocation matched by name against the running kernel's
 * BTF at load time. */
#ifndef WHYSLOW_KERNEL_FS_H
#define WHYSLOW_KERNEL_FS_H

/* i_mode file types (include/uapi/linux/stat.h). */
#define WS_S_IFMT 00170000
#define WS_S_IFREG 0100000
#define WS_S_IFBLK 0060000
#define WS_S_IFDIR 0040000

struct super_block {
	struct block_device *s_bdev; /* NULL: no block device (tmpfs, proc, sysfs, pipes, sockets) */
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	dev_t i_rdev; /* block device files: the device, kernel dev_t */
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct vm_area_struct {
	struct file *vm_file;
} __attribute__((preserve_access_index));

#endif
