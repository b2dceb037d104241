// SPDX-License-Identifier: GPL-2.0-only
/*
 * pcteleport: list the restorable page-cache pages of block-backed filesystems.
 *
 * A page is restorable when it is a page-cache page of a regular file that is clean, up to
 * date and not under writeback, and the disk block(s) behind it are known: its bytes can then
 * be read back from a replica of the disk instead of being copied during live migration
 * (page cache teleportation, Akiyama et al., CCGrid'13).
 *
 * /proc/pcteleport/map    one line per extent of restorable pages:
 *                         "<pfn hex> <pages> <major>:<minor> <byte offset on the whole disk, hex>"
 *                         after "#" header lines naming the walked super blocks and counters.
 * /proc/pcteleport/stats  "name value" counters from a cheaper walk that does not look up
 *                         disk blocks (restorable_estimate = pages the map would consider).
 * Both are root only (0400): every open is a walk of all cached inodes, and the map gives
 * away page frame numbers.
 * /sys/module/pcteleport/parameters/supported  (read-only) the filesystem types the walk
 *                         can map: the one list of them, which the guest agent reads.
 *
 * Each open of a file takes one snapshot (a walk of every super block of the filesystem
 * types in the fstypes parameter); reads then page through that snapshot by position, so
 * a reader resumes in O(1) however many pages there are. The walk takes no lock across
 * sleeping calls: inodes are pinned with __iget() like fs/drop_caches.c, folios through
 * filemap_get_folios(), and it calls cond_resched() per inode and per folio batch, and
 * also among inodes it skips whenever another task is waiting (see pct_walk_sb()).
 *
 * Block lookup: through the filesystem's ->fiemap (ext4, xfs), into a small buffer mapped in
 * the reading process for the duration of the walk, without FIEMAP_FLAG_SYNC, so it never
 * writes anything back; extents that are delalloc, unwritten, inline, encoded or encrypted are
 * not restorable. Filesystems without ->fiemap (vfat, msdos) fall back to bmap(). bmap() is
 * never called for a dirty folio, nor for any folio of a file whose mapping is tagged dirty
 * (counted as in_dirty_file): ext4's bmap writes back a file with dirty delalloc pages.
 *
 * Works with: ext4 (and ext2/ext3 through the ext4 driver) and xfs (->fiemap), vfat and
 * msdos (->bmap), the list pct_supported[]; only these are walked, whatever fstypes names.
 * Not btrfs: its FIEMAP addresses are not device offsets and its data may be compressed. Not
 * encrypted files, not DAX. Block devices stacked on others (dm, md) are reported with their
 * own major:minor. Pages of block device inodes (metadata in the buffer cache, raw reads) are
 * not listed.
 */
#include <linux/module.h>
#include <linux/fs.h>
#include <linux/blkdev.h>
#include <linux/pagemap.h>
#include <linux/pagevec.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/ktime.h>
#include <linux/fiemap.h>
#include <linux/mman.h>

#define PCT_MAX_SBS 64
#define PCT_FIEMAP_EXTENTS 128
/* Extents whose bytes on disk are not (yet) the file's bytes. */
#define PCT_FIEMAP_UNUSABLE (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | \
			     FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED | \
			     FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE | \
			     FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_UNWRITTEN)

/*
 * Filesystems whose FIEMAP/bmap block numbers are offsets on their own block device. This is
 * the only copy of the list: the parameter "supported" shows it read-only, and the guest
 * agent reads it there before it sets fstypes (so before any walk, and without root).
 */
static const char * const pct_supported[] = { "ext4", "ext3", "ext2", "xfs", "vfat", "msdos" };

static int pct_supported_get(char *buf, const struct kernel_param *kp)
{
	unsigned int i;
	int len = 0;

	for (i = 0; i < ARRAY_SIZE(pct_supported); i++)
		len += scnprintf(buf + len, PAGE_SIZE - len, "%s%s", i ? "," : "",
				 pct_supported[i]);
	return len + scnprintf(buf + len, PAGE_SIZE - len, "\n");
}

/* insmod calls ->set for a parameter given on its command line: there must be one. */
static int pct_supported_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;	/* what the code can map, not a setting */
}

static const struct kernel_param_ops pct_supported_ops = {
	.set = pct_supported_set,
	.get = pct_supported_get,
};
module_param_cb(supported, &pct_supported_ops, NULL, 0444);
MODULE_PARM_DESC(supported, "filesystem types the walk can map (read-only)");

static char *fstypes = "ext4,ext3,ext2";
module_param(fstypes, charp, 0644);
MODULE_PARM_DESC(fstypes,
		 "comma-separated filesystem types to walk, among those in supported; others are "
		 "ignored (naming one that is not registered makes the kernel try to load it)");

static unsigned long max_extents = 1UL << 24;
module_param(max_extents, ulong, 0644);
MODULE_PARM_DESC(max_extents, "largest map snapshot, in extents (24 bytes each)");

struct pct_extent {
	u64 pfn;
	u64 disk_off;
	u32 pages;
	u32 dev;		/* whole disk, new_encode_dev() */
};

struct pct_counters {
	u64 superblocks, inodes;
	u64 cached, dirty, writeback, not_uptodate, clean;
	u64 in_dirty_file, unmappable, restorable_estimate;
	u64 lock_breaks;	/* inode list lock dropped at a skipped inode to reschedule */
	u64 restorable, unmapped, unaligned, tail, via_fiemap, via_bmap;
};

struct pct_sb_info {
	char fstype[16];
	char bdev[BDEVNAME_SIZE];
	char disk[DISK_NAME_LEN];
	dev_t disk_dev;
	dev_t part_dev;
	u64 start;		/* bytes from the start of the whole disk */
};

struct pct_snapshot {
	bool want_map;
	int err;
	struct pct_extent *ext;
	size_t n, cap;
	struct pct_counters c;
	struct pct_sb_info sbs[PCT_MAX_SBS];
	unsigned int nsbs;
	u64 walk_ns;
	const char *cur_fstype;
	/* FIEMAP results: user memory of the reading process, and a kernel copy */
	struct fiemap_extent __user *ubuf;
	struct fiemap_extent *kbuf;
};

/* Where a walk stands in one file's extent list: kbuf[i..n) cover file bytes < covered. */
struct pct_fiemap_cursor {
	unsigned int n, i;
	u64 covered;
};

static int pct_add_extent(struct pct_snapshot *s, u64 pfn, u64 off, dev_t dev)
{
	u32 d = new_encode_dev(dev);
	struct pct_extent *e = s->n ? &s->ext[s->n - 1] : NULL;

	if (e && e->dev == d && e->pfn + e->pages == pfn &&
	    e->disk_off + ((u64)e->pages << PAGE_SHIFT) == off && e->pages < U32_MAX) {
		e->pages++;
		return 0;
	}
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4096;
		struct pct_extent *bigger;

		if (cap > max_extents)
			cap = max_extents;
		if (cap <= s->n)
			return -E2BIG;
		bigger = kvrealloc(s->ext, s->cap * sizeof(*e), cap * sizeof(*e),
				   GFP_KERNEL | __GFP_NOWARN);
		if (!bigger)
			return -ENOMEM;
		s->ext = bigger;
		s->cap = cap;
	}
	s->ext[s->n++] = (struct pct_extent){ pfn, off, 1, d };
	return 0;
}

/*
 * Byte offset on the whole disk of file page @index, or -1 when any block of the page is a
 * hole, unwritten, or not contiguous with the others.
 */
static s64 pct_disk_offset(struct inode *inode, pgoff_t index)
{
	unsigned int shift = PAGE_SHIFT - inode->i_blkbits;
	unsigned int b;
	sector_t first = 0;

	for (b = 0; b < (1U << shift); b++) {
		sector_t blk = ((sector_t)index << shift) + b;

		if (bmap(inode, &blk) || blk == 0)
			return -1;
		if (b == 0)
			first = blk;
		else if (blk != first + b)
			return -1;
	}
	return ((s64)first << inode->i_blkbits) +
	       ((s64)inode->i_sb->s_bdev->bd_start_sect << SECTOR_SHIFT);
}

static u64 pct_fe_end(const struct fiemap_extent *e)
{
	return e->fe_logical + e->fe_length;
}

/* The next extents of @inode from file byte @pos on, into s->kbuf. */
static int pct_fiemap_fill(struct pct_snapshot *s, struct inode *inode,
			   struct pct_fiemap_cursor *fc, u64 pos)
{
	struct fiemap_extent_info fi = {
		.fi_flags = 0,	/* never FIEMAP_FLAG_SYNC: no writeback */
		.fi_extents_max = PCT_FIEMAP_EXTENTS,
		.fi_extents_start = s->ubuf,
	};
	u64 end = round_up(i_size_read(inode), PAGE_SIZE);
	int ret;

	fc->n = fc->i = 0;
	if (pos >= end) {
		fc->covered = U64_MAX;
		return 0;
	}
	ret = inode->i_op->fiemap(inode, &fi, pos, end - pos);
	if (ret)
		return ret;
	if (fi.fi_extents_mapped > PCT_FIEMAP_EXTENTS)
		return -EIO;
	if (copy_from_user(s->kbuf, s->ubuf, fi.fi_extents_mapped * sizeof(*s->kbuf)))
		return -EFAULT;
	fc->n = fi.fi_extents_mapped;
	if (fc->n < PCT_FIEMAP_EXTENTS || (s->kbuf[fc->n - 1].fe_flags & FIEMAP_EXTENT_LAST))
		fc->covered = U64_MAX;
	else
		fc->covered = max(pct_fe_end(&s->kbuf[fc->n - 1]), pos + PAGE_SIZE);
	return 0;
}

/*
 * Byte offset on the filesystem's device of the file page at byte @pos, from ->fiemap.
 * Pages come in increasing @pos order, so the cursor only moves forward.
 */
static int pct_fiemap_lookup(struct pct_snapshot *s, struct inode *inode,
			     struct pct_fiemap_cursor *fc, u64 pos, u64 *phys)
{
	const struct fiemap_extent *e;
	int ret;

	for (;;) {
		while (fc->i < fc->n && pos >= pct_fe_end(&s->kbuf[fc->i]))
			fc->i++;
		if (fc->i < fc->n)
			break;
		if (pos < fc->covered && fc->n)
			return -ENOENT;	/* in a hole after the last extent listed */
		ret = pct_fiemap_fill(s, inode, fc, pos);
		if (ret)
			return ret;
		if (!fc->n)
			return -ENOENT;
	}
	e = &s->kbuf[fc->i];
	if (pos < e->fe_logical || pos + PAGE_SIZE > pct_fe_end(e) ||
	    (e->fe_flags & PCT_FIEMAP_UNUSABLE))
		return -ENOENT;
	*phys = e->fe_physical + (pos - e->fe_logical);
	return 0;
}

static void pct_walk_folio(struct pct_snapshot *s, struct inode *inode, struct folio *folio,
			   struct pct_fiemap_cursor *fc, bool mappable, pgoff_t eof_index)
{
	struct address_space *mapping = inode->i_mapping;
	/* (the stats walk looks nothing up: it counts what the map would consider) */
	bool use_fiemap = inode->i_op->fiemap && (s->ubuf || !s->want_map);
	long nr = folio_nr_pages(folio);
	u64 start = (u64)inode->i_sb->s_bdev->bd_start_sect << SECTOR_SHIFT;
	long i;

	s->c.cached += nr;
	/* Read the state first: a dirty folio must never reach bmap(). */
	if (folio_test_dirty(folio)) {
		s->c.dirty += nr;
		return;
	}
	if (folio_test_writeback(folio)) {
		s->c.writeback += nr;
		return;
	}
	if (!folio_test_uptodate(folio) || folio->mapping != mapping) {
		s->c.not_uptodate += nr;
		return;
	}
	s->c.clean += nr;
	if (!mappable) {
		s->c.unmappable += nr;
		return;
	}
	if (!use_fiemap && mapping_tagged(mapping, PAGECACHE_TAG_DIRTY)) {
		s->c.in_dirty_file += nr;
		return;
	}
	s->c.restorable_estimate += nr;
	if (!s->want_map || s->err)
		return;

	for (i = 0; i < nr; i++) {
		pgoff_t index = folio->index + i;
		u64 phys;
		s64 off;

		if (index >= eof_index) {	/* truncated meanwhile */
			s->c.unmapped++;
			continue;
		}
		if (use_fiemap) {
			off = pct_fiemap_lookup(s, inode, fc, (u64)index << PAGE_SHIFT, &phys) ?
			      -1 : (s64)(phys + start);
		} else {
			/* Re-check right before bmap(): the file may have been written to. */
			if (folio_test_dirty(folio) ||
			    mapping_tagged(mapping, PAGECACHE_TAG_DIRTY)) {
				s->c.in_dirty_file += nr - i;
				return;
			}
			off = pct_disk_offset(inode, index);
		}
		if (off < 0) {
			s->c.unmapped++;
			continue;
		}
		if (off & (PAGE_SIZE - 1)) {
			s->c.unaligned++;
			continue;
		}
		if ((index + 1) << PAGE_SHIFT > i_size_read(inode))
			s->c.tail++;	/* bytes past EOF are zero in the page */
		s->err = pct_add_extent(s, folio_pfn(folio) + i, off,
					disk_devt(inode->i_sb->s_bdev->bd_disk));
		if (s->err)
			return;
		s->c.restorable++;
		if (use_fiemap)
			s->c.via_fiemap++;
		else
			s->c.via_bmap++;
	}
}

static void pct_walk_inode(struct pct_snapshot *s, struct inode *inode)
{
	struct address_space *mapping = inode->i_mapping;
	loff_t isize = i_size_read(inode);
	pgoff_t eof_index = (isize + PAGE_SIZE - 1) >> PAGE_SHIFT;
	bool mappable = (mapping->a_ops->bmap || inode->i_op->fiemap) &&
			!IS_ENCRYPTED(inode) && !IS_DAX(inode);
	struct pct_fiemap_cursor fc = { 0, 0, 0 };
	struct folio_batch fbatch;
	pgoff_t index = 0;
	unsigned int i;

	s->c.inodes++;
	folio_batch_init(&fbatch);
	while (filemap_get_folios(mapping, &index, ULONG_MAX, &fbatch)) {
		for (i = 0; i < folio_batch_count(&fbatch); i++)
			pct_walk_folio(s, inode, fbatch.folios[i], &fc, mappable, eof_index);
		folio_batch_release(&fbatch);
		cond_resched();
	}
}

static void pct_note_sb(struct pct_snapshot *s, struct super_block *sb)
{
	struct block_device *bdev = sb->s_bdev;
	struct pct_sb_info *info;

	if (s->nsbs >= PCT_MAX_SBS)
		return;
	info = &s->sbs[s->nsbs++];
	strscpy(info->fstype, s->cur_fstype, sizeof(info->fstype));
	snprintf(info->bdev, sizeof(info->bdev), "%pg", bdev);
	strscpy(info->disk, bdev->bd_disk->disk_name, sizeof(info->disk));
	info->disk_dev = disk_devt(bdev->bd_disk);
	info->part_dev = bdev->bd_dev;
	info->start = (u64)bdev->bd_start_sect << SECTOR_SHIFT;
}

/*
 * Called by iterate_supers_type() with sb->s_umount held for reading (sleeping is fine).
 *
 * s_inode_list_lock is a spinlock: while it is held this CPU cannot reschedule. The lock is
 * dropped around each inode the walk works on, pinned by __iget() so that its place in
 * s_inodes stays valid. Inodes with nothing to walk are skipped under the lock, and a
 * filesystem can hold a very long run of them (empty or stat'ed files, directories, inodes
 * whose pages were evicted): when need_resched() says another task waits, the skipped inode
 * is pinned too and the lock dropped for cond_resched(), as drop_pagecache_sb() in
 * fs/drop_caches.c does, so that no run of skipped inodes can become a soft lockup.
 */
static void pct_walk_sb(struct super_block *sb, void *arg)
{
	struct pct_snapshot *s = arg;
	struct inode *inode, *toput = NULL;
	bool walk;

	if (!sb->s_bdev)
		return;
	s->c.superblocks++;
	pct_note_sb(s, sb);

	spin_lock(&sb->s_inode_list_lock);
	list_for_each_entry(inode, &sb->s_inodes, i_sb_list) {
		spin_lock(&inode->i_lock);
		/* Being set up or torn down: cannot be pinned, so always skipped. */
		if (inode->i_state & (I_FREEING | I_WILL_FREE | I_NEW)) {
			spin_unlock(&inode->i_lock);
			continue;
		}
		walk = S_ISREG(inode->i_mode) && inode->i_mapping->nrpages;
		if (!walk && !need_resched()) {
			spin_unlock(&inode->i_lock);
			continue;
		}
		/* The reference keeps the inode, and so our place in s_inodes, valid. */
		__iget(inode);
		spin_unlock(&inode->i_lock);
		spin_unlock(&sb->s_inode_list_lock);

		iput(toput);	/* the previous one: iput() may sleep, so not under the lock */
		toput = inode;
		if (walk)
			pct_walk_inode(s, inode);
		else
			s->c.lock_breaks++;
		cond_resched();

		spin_lock(&sb->s_inode_list_lock);
	}
	spin_unlock(&sb->s_inode_list_lock);
	iput(toput);
}

static void pct_walk(struct pct_snapshot *s)
{
	char *list, *cursor, *name;
	u64 t0 = ktime_get_ns();

	kernel_param_lock(THIS_MODULE);	/* fstypes may be rewritten through sysfs */
	list = kstrdup(fstypes, GFP_KERNEL);
	kernel_param_unlock(THIS_MODULE);
	if (!list) {
		s->err = -ENOMEM;
		return;
	}
	cursor = list;
	while ((name = strsep(&cursor, ",")) != NULL) {
		struct file_system_type *type;

		name = strim(name);
		if (match_string(pct_supported, ARRAY_SIZE(pct_supported), name) < 0)
			continue;
		type = get_fs_type(name);
		if (!type)
			continue;
		s->cur_fstype = type->name;
		iterate_supers_type(type, pct_walk_sb, s);
		module_put(type->owner);
	}
	kfree(list);
	s->walk_ns = ktime_get_ns() - t0;
}

static struct pct_snapshot *pct_snapshot_take(bool want_map)
{
	size_t fm_size = PCT_FIEMAP_EXTENTS * sizeof(struct fiemap_extent);
	struct pct_snapshot *s = kzalloc(sizeof(*s), GFP_KERNEL);
	unsigned long addr;

	if (!s)
		return NULL;
	s->want_map = want_map;
	/*
	 * ->fiemap copies extents to user memory: lend it a page of the reading process for the
	 * walk. Without one (no mm), the walk uses bmap() with its dirty-file restriction.
	 */
	if (want_map && current->mm)
		s->kbuf = kmalloc(fm_size, GFP_KERNEL);
	if (s->kbuf) {
		addr = vm_mmap(NULL, 0, fm_size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, 0);
		if (!IS_ERR_VALUE(addr))
			s->ubuf = (struct fiemap_extent __user *)addr;
	}
	pct_walk(s);
	if (s->ubuf)
		vm_munmap((unsigned long)s->ubuf, fm_size);
	s->ubuf = NULL;
	kfree(s->kbuf);
	s->kbuf = NULL;
	return s;
}

static void pct_snapshot_free(struct pct_snapshot *s)
{
	if (s)
		kvfree(s->ext);
	kfree(s);
}

static void pct_show_counters(struct seq_file *m, const struct pct_snapshot *s,
			      const char *prefix)
{
	const struct pct_counters *c = &s->c;

	seq_printf(m, "%ssuperblocks %llu\n%sinodes %llu\n", prefix, c->superblocks,
		   prefix, c->inodes);
	seq_printf(m, "%scached %llu\n%sdirty %llu\n%swriteback %llu\n", prefix, c->cached,
		   prefix, c->dirty, prefix, c->writeback);
	seq_printf(m, "%snot_uptodate %llu\n%sclean %llu\n%sin_dirty_file %llu\n", prefix,
		   c->not_uptodate, prefix, c->clean, prefix, c->in_dirty_file);
	seq_printf(m, "%sunmappable %llu\n%srestorable_estimate %llu\n%slock_breaks %llu\n",
		   prefix, c->unmappable, prefix, c->restorable_estimate, prefix, c->lock_breaks);
	if (s->want_map)
		seq_printf(m, "%srestorable %llu\n%sunmapped %llu\n%sunaligned %llu\n%stail %llu\n"
			   "%svia_fiemap %llu\n%svia_bmap %llu\n%sextents %zu\n", prefix,
			   c->restorable, prefix, c->unmapped, prefix, c->unaligned, prefix, c->tail,
			   prefix, c->via_fiemap, prefix, c->via_bmap, prefix, s->n);
	seq_printf(m, "%swalk_ns %llu\n%spage_size %lu\n", prefix, s->walk_ns, prefix,
		   PAGE_SIZE);
	if (s->err)
		seq_printf(m, "%serror %d\n", prefix, s->err);
}

static void pct_show_sbs(struct seq_file *m, const struct pct_snapshot *s, const char *prefix)
{
	unsigned int i;

	for (i = 0; i < s->nsbs; i++) {
		const struct pct_sb_info *sb = &s->sbs[i];

		seq_printf(m, "%ssb %s %s %u:%u disk %s %u:%u start %llu\n", prefix, sb->fstype,
			   sb->bdev, MAJOR(sb->part_dev), MINOR(sb->part_dev), sb->disk,
			   MAJOR(sb->disk_dev), MINOR(sb->disk_dev), sb->start);
	}
}

/* --- /proc/pcteleport/map -------------------------------------------------------------- */

static void *pct_map_start(struct seq_file *m, loff_t *pos)
{
	struct pct_snapshot *s = m->private;

	if (*pos == 0)
		return SEQ_START_TOKEN;
	return *pos <= s->n ? &s->ext[*pos - 1] : NULL;
}

static void *pct_map_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return pct_map_start(m, pos);
}

static void pct_map_stop(struct seq_file *m, void *v)
{
}

static int pct_map_show(struct seq_file *m, void *v)
{
	struct pct_snapshot *s = m->private;
	const struct pct_extent *e = v;
	dev_t dev;

	if (v == SEQ_START_TOKEN) {
		seq_puts(m, "# pcteleport map v1: pfn(hex) pages major:minor disk_offset(hex)\n");
		pct_show_sbs(m, s, "# ");
		pct_show_counters(m, s, "# ");
		if (s->err == -E2BIG || s->err == -ENOMEM)
			seq_puts(m, "# truncated\n");
		return 0;
	}
	dev = new_decode_dev(e->dev);
	seq_printf(m, "%llx %u %u:%u %llx\n", e->pfn, e->pages, MAJOR(dev), MINOR(dev),
		   e->disk_off);
	return 0;
}

static const struct seq_operations pct_map_ops = {
	.start = pct_map_start,
	.next = pct_map_next,
	.stop = pct_map_stop,
	.show = pct_map_show,
};

static int pct_map_open(struct inode *inode, struct file *file)
{
	struct pct_snapshot *s = pct_snapshot_take(true);
	int ret;

	if (!s)
		return -ENOMEM;
	ret = seq_open(file, &pct_map_ops);
	if (ret) {
		pct_snapshot_free(s);
		return ret;
	}
	((struct seq_file *)file->private_data)->private = s;
	return 0;
}

static int pct_map_release(struct inode *inode, struct file *file)
{
	pct_snapshot_free(((struct seq_file *)file->private_data)->private);
	return seq_release(inode, file);
}

static const struct proc_ops pct_map_fops = {
	.proc_open = pct_map_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = pct_map_release,
};

/* --- /proc/pcteleport/stats ------------------------------------------------------------ */

static int pct_stats_show(struct seq_file *m, void *v)
{
	pct_show_counters(m, m->private, "");
	pct_show_sbs(m, m->private, "");
	return 0;
}

static int pct_stats_open(struct inode *inode, struct file *file)
{
	struct pct_snapshot *s = pct_snapshot_take(false);
	int ret;

	if (!s)
		return -ENOMEM;
	ret = single_open(file, pct_stats_show, s);
	if (ret)
		pct_snapshot_free(s);
	return ret;
}

static int pct_stats_release(struct inode *inode, struct file *file)
{
	pct_snapshot_free(((struct seq_file *)file->private_data)->private);
	return single_release(inode, file);
}

static const struct proc_ops pct_stats_fops = {
	.proc_open = pct_stats_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = pct_stats_release,
};

static struct proc_dir_entry *pct_dir;

static int __init pct_init(void)
{
	pct_dir = proc_mkdir("pcteleport", NULL);
	if (!pct_dir)
		return -ENOMEM;
	/*
	 * Root only, both: an open is a walk of every cached inode (any user could otherwise
	 * keep a CPU busy with it), and the map names page frame numbers.
	 */
	if (!proc_create("map", 0400, pct_dir, &pct_map_fops) ||
	    !proc_create("stats", 0400, pct_dir, &pct_stats_fops)) {
		proc_remove(pct_dir);
		return -ENOMEM;
	}
	return 0;
}

static void __exit pct_exit(void)
{
	proc_remove(pct_dir);
}

module_init(pct_init);
module_exit(pct_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("pcteleport");
MODULE_DESCRIPTION("List clean page-cache pages and the disk blocks they mirror");
