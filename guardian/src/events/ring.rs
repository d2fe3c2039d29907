//! The kernel's ring buffer (`BPF_MAP_TYPE_RINGBUF`), read with its data
//! area mapped once.
//!
//! Why not aya's `RingBuf`: the kernel lets a reader map the ring's data
//! pages twice in a row, so that a record that wraps past the end of the
//! area reads as one piece, and aya (like libbpf) maps it so. The kernel
//! backs that mapping with `remap_vmalloc_range()`, which inserts every
//! page at `mmap` time, so all of it is resident from the start and counted
//! in the agent's RSS: a 2 MiB ring showed as 4 MiB (4,104 KiB with its
//! two metadata pages), a quarter of the idle agent (`docs/footprint.md`).
//! The kernel holds the ring once whatever we map; the second copy is only
//! a reader's convenience. Here the data area is mapped once, and the one
//! record in a lap that runs past its end is copied out in two pieces: the
//! ring counts its own size plus two pages. What that saves is the resident
//! figure (the budget's measure, `VmRSS`) and the page tables of the second
//! view (4 KiB for 2 MiB), not RAM: both views were of the same kernel
//! pages.
//!
//! The layout and protocol, from the kernel's `kernel/bpf/ringbuf.c`
//! (<https://github.com/torvalds/linux/blob/v6.12/kernel/bpf/ringbuf.c>)
//! and libbpf's reader (`tools/lib/bpf/ringbuf.c`):
//!
//! - At file offset 0, one page holding `consumer_pos`: the only page a
//!   reader may map writable (`ringbuf_map_mmap_kern` refuses any other
//!   writable mapping). Then one page holding `producer_pos` (and, on newer
//!   kernels, `pending_pos`), then the data area, a power-of-two multiple
//!   of the page size (the map's `max_entries`). Positions are byte counts
//!   that only grow (`unsigned long`); a position's offset in the area is
//!   `pos & (size - 1)`.
//! - Each record starts with an 8-byte header, `u32 len` then `u32
//!   pg_off` (the kernel's own bookkeeping), and the record takes its
//!   length plus the header, rounded up to 8. Bit 31 of `len`
//!   (`BPF_RINGBUF_BUSY_BIT`) says the record is reserved but not yet
//!   committed, bit 30 (`BPF_RINGBUF_DISCARD_BIT`) that it was discarded.
//!   Because every record starts 8-aligned and the area's size is a
//!   multiple of the page size, a header never straddles the end; only a
//!   body can.
//! - The producer publishes `producer_pos` with a release store after
//!   reserving, and commits a record by exchanging its header's `len`
//!   (fully ordered); so the reader loads `producer_pos` and `len` with
//!   acquire, copies the body, and only then publishes `consumer_pos`
//!   with a release store: the kernel reuses the slot after it sees that
//!   store.
//! - Wake-ups (what makes the map's fd readable in epoll): a producer
//!   wakes the reader when, committing a record, it finds `consumer_pos`
//!   equal to that record's position, that is, the reader has caught up
//!   and waits for exactly this record. A reader about to conclude "nothing
//!   more" after moving `consumer_pos` must therefore make its store
//!   visible before its last look at `producer_pos` or at a busy header (a
//!   full fence), or the producer may read the old position, not wake it,
//!   and the record sits until the next unrelated wake-up.
//!
//! The map itself is untouched: the same kernel object, pinned and adopted
//! by a restarted agent as before (`consumer_pos` lives in the kernel, so
//! a new agent carries on where the last one stopped); only this process's
//! view of it differs. The reading logic works on [`Area`], which the
//! mapping implements and the tests implement over a plain buffer.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{self, AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::{MapData, MapError};

/// A record reserved and not yet committed (the kernel's
/// `BPF_RINGBUF_BUSY_BIT`).
const BUSY_BIT: u32 = 1 << 31;
/// A record the producer discarded (`BPF_RINGBUF_DISCARD_BIT`).
const DISCARD_BIT: u32 = 1 << 30;
/// Bytes of the header before each record (`BPF_RINGBUF_HDR_SZ`).
const HEADER: usize = 8;

/// Why the ring buffer could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The map named as the ring buffer is of another type.
    #[error("the map is not a ring buffer")]
    NotARing,
    /// The map's description could not be read from the kernel.
    #[error("reading the ring buffer map's info")]
    Info(#[source] MapError),
    /// The map's size is not one the kernel would have made.
    #[error("the ring buffer's size {size} is not a power-of-two multiple of the page size {page}")]
    Size {
        /// The map's `max_entries`.
        size: u32,
        /// This machine's page size.
        page: usize,
    },
    /// This machine's page size could not be read.
    #[error("reading the page size")]
    PageSize(#[source] io::Error),
    /// A part of the ring could not be mapped.
    #[error("mapping the ring buffer's {part}")]
    Map {
        /// `consumer page` or `producer page and data`.
        part: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The ring as the reader sees it: its two positions and its data area of
/// [`Area::size`] bytes. Offsets given to it are below the size; the
/// mapping and the tests' buffer implement it.
trait Area {
    /// The data area's size in bytes.
    fn size(&self) -> usize;
    /// `producer_pos`, loaded with acquire.
    fn producer_pos(&self) -> usize;
    /// `consumer_pos`, loaded with acquire.
    fn consumer_pos(&self) -> usize;
    /// Publish `consumer_pos` with release.
    fn set_consumer_pos(&self, pos: usize);
    /// The `len` word of the header at `offset` (8-aligned), loaded with
    /// acquire.
    fn header(&self, offset: usize) -> u32;
    /// Append `len` bytes from `offset` to `out` (`offset + len` at most
    /// the size).
    fn copy(&self, offset: usize, len: usize, out: &mut Vec<u8>);
}

/// Where the reader is in the ring.
#[derive(Debug)]
struct Cursor {
    /// Our `consumer_pos` (the kernel's copy is only written by us).
    pos: usize,
    /// `producer_pos` when last loaded: records up to it are read without
    /// loading it again.
    producer: usize,
    /// `consumer_pos` moved since the last full fence (see the module's
    /// opening on wake-ups).
    fence_due: bool,
}

impl Cursor {
    fn new(area: &impl Area) -> Self {
        let pos = area.consumer_pos();
        Self {
            pos,
            producer: pos,
            fence_due: false,
        }
    }

    /// Copy the next committed record to `buf` as its length (`u32`,
    /// native order) and its bytes, and release its slot; discarded
    /// records are released on the way. False when no committed record
    /// waits (the ring is empty, or the next record is still busy).
    fn copy_next(&mut self, area: &impl Area, buf: &mut Vec<u8>) -> bool {
        let size = area.size();
        loop {
            if self.pos == self.producer {
                self.fence();
                self.producer = area.producer_pos();
                // Positions only grow (wrapping in theory): compare equal,
                // not less.
                if self.pos == self.producer {
                    return false;
                }
            }
            if !self.pos.is_multiple_of(8) {
                // Records start 8-aligned, and only we move this position;
                // a misaligned one was written by someone else. The
                // producer's position is always aligned: start over there.
                log::error!(
                    "ring buffer: the consumer position {} is not 8-aligned; skipping to the producer's position",
                    self.pos
                );
                self.release(area, self.producer);
                continue;
            }
            let offset = self.pos & (size - 1);
            let header = area.header(offset);
            if header & BUSY_BIT != 0 {
                if self.fence_due {
                    // Look once more after the fence: either the record
                    // is committed by now, or its producer will see where
                    // we are and wake us.
                    self.fence();
                    continue;
                }
                return false;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > size - HEADER {
                // The kernel never writes this (a record fits the area).
                // Rather than read past a record that cannot be, give up
                // on what is published so far, once, loudly.
                log::error!(
                    "ring buffer: a record of {len} bytes in a {size}-byte ring; skipping to the producer's position"
                );
                self.release(area, self.producer);
                continue;
            }
            if header & DISCARD_BIT == 0 {
                // A record's length fits in 30 bits (the header's).
                buf.extend_from_slice(&(len as u32).to_ne_bytes());
                // The header does not wrap (see the opening); the body may.
                let body = (offset + HEADER) & (size - 1);
                let first = len.min(size - body);
                area.copy(body, first, buf);
                area.copy(0, len - first, buf);
            }
            self.release(
                area,
                self.pos.wrapping_add((HEADER + len).next_multiple_of(8)),
            );
            if header & DISCARD_BIT == 0 {
                return true;
            }
        }
    }

    /// Give the slots before `pos` back to the kernel, at once: the
    /// record is copied, and the producer may use its room.
    fn release(&mut self, area: &impl Area, pos: usize) {
        self.pos = pos;
        area.set_consumer_pos(pos);
        self.fence_due = true;
    }

    /// A full fence, if `consumer_pos` moved since the last one.
    fn fence(&mut self) {
        if self.fence_due {
            atomic::fence(Ordering::SeqCst);
            self.fence_due = false;
        }
    }
}

/// The kernel's ring buffer, mapped for reading (see the module's
/// opening). Its fd is the map's: epoll on it says when records wait.
#[derive(Debug)]
pub struct EventRing {
    /// Our view of the consumer page, the producer page and the data.
    area: Mapped,
    cursor: Cursor,
    /// Last: the map (and its fd) outlives nothing that needs it, the
    /// mappings hold their own reference to the kernel object.
    map: MapData,
}

impl EventRing {
    /// Map the ring buffer `map` for reading, from where the last reader
    /// (an agent before this one, for a pinned map) stopped.
    pub fn new(map: MapData) -> Result<Self, RingError> {
        let size = map.info().map_err(RingError::Info)?.max_entries();
        let area = Mapped::new(map.fd().as_fd(), size)?;
        let cursor = Cursor::new(&area);
        Ok(Self { area, cursor, map })
    }

    /// Copy the next record out and release its slot (see
    /// [`Cursor::copy_next`]); false when none is waiting.
    pub fn copy_next(&mut self, buf: &mut Vec<u8>) -> bool {
        self.cursor.copy_next(&self.area, buf)
    }

    /// The data area's size in bytes.
    pub fn size(&self) -> usize {
        self.area.size
    }

    /// Give the map back (the mapping goes): for a reader of another kind.
    pub fn into_map(self) -> MapData {
        self.map
    }
}

impl AsFd for EventRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// The ring's two mappings: the consumer page, writable, and the producer
/// page with the data area once after it, read-only.
#[derive(Debug)]
struct Mapped {
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: usize,
}

impl Mapped {
    fn new(fd: BorrowedFd<'_>, size: u32) -> Result<Self, RingError> {
        let page = page_size()?;
        let bytes = size as usize;
        if !size.is_power_of_two() || !bytes.is_multiple_of(page) {
            return Err(RingError::Size { size, page });
        }
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        // The data once: `page + bytes`, where a double mapping would be
        // `page + 2 * bytes` (see the opening).
        let producer = Mapping::new(
            fd,
            page + bytes,
            libc::PROT_READ,
            page,
            "producer page and data",
        )?;
        Ok(Self {
            consumer,
            producer,
            page,
            size: bytes,
        })
    }
}

impl Area for Mapped {
    fn size(&self) -> usize {
        self.size
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: `producer_pos` opens the producer mapping, which is
        // page-aligned (so aligned for a usize, the kernel's `unsigned
        // long`) and lives as long as `self`; the kernel writes it only
        // with atomic stores.
        let pos = unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicUsize>() };
        pos.load(Ordering::Acquire)
    }

    fn consumer_pos(&self) -> usize {
        // SAFETY: as for `producer_pos`, at the start of the consumer
        // mapping.
        let pos = unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicUsize>() };
        pos.load(Ordering::Acquire)
    }

    fn set_consumer_pos(&self, pos: usize) {
        // SAFETY: as for `consumer_pos`; that mapping is writable.
        let at = unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicUsize>() };
        at.store(pos, Ordering::Release);
    }

    fn header(&self, offset: usize) -> u32 {
        if !offset.is_multiple_of(8) || offset >= self.size {
            // The cursor never asks this; a busy header stops the read.
            return BUSY_BIT;
        }
        // SAFETY: `page + offset` is 8-aligned and at least 8 bytes before
        // the mapping's end (`page + size`, both multiples of 8); the
        // kernel writes the header's `len` only atomically.
        let len = unsafe {
            &*self
                .producer
                .ptr
                .as_ptr()
                .add(self.page + offset)
                .cast::<AtomicU32>()
        };
        len.load(Ordering::Acquire)
    }

    fn copy(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            // The cursor never asks this.
            return;
        }
        // SAFETY: the bytes lie inside the data mapping (checked above),
        // which lives as long as `self`. They belong to a committed
        // record whose slot is not yet released, so the kernel does not
        // write them while they are read, and the acquire load of the
        // record's header ordered its writes before this read.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(self.page + offset), len)
        };
        out.extend_from_slice(bytes);
    }
}

/// One shared mapping of the map's fd, unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory shared with the kernel, not tied to a
// thread; it is read through atomics and copies of committed records.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: libc::c_int,
        offset: usize,
        part: &'static str,
    ) -> Result<Self, RingError> {
        let err = |source| RingError::Map { part, source };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: a new shared mapping at an address the kernel chooses, of
        // a fd that is open for the duration of the call; it touches no
        // memory of ours.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::Error::from(io::ErrorKind::InvalidData)))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made; nothing borrowed from it
        // outlives `self` (records are copied out).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> Result<usize, RingError> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).map_err(|_| RingError::PageSize(io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// A ring over a plain buffer, with a producer that writes records as
    /// the kernel lays them out.
    struct Fake {
        data: RefCell<Vec<u8>>,
        producer: Cell<usize>,
        consumer: Cell<usize>,
    }

    impl Fake {
        fn new(size: usize, start: usize) -> Self {
            Self {
                data: RefCell::new(vec![0xAA; size]),
                producer: Cell::new(start),
                consumer: Cell::new(start),
            }
        }

        /// Reserve and write a record of `body` (committed unless `busy`,
        /// discarded if `discard`); returns its position.
        fn push(&self, body: &[u8], busy: bool, discard: bool) -> usize {
            let mut data = self.data.borrow_mut();
            let size = data.len();
            let at = self.producer.get();
            let room = size - (at - self.consumer.get());
            let need = (HEADER + body.len()).next_multiple_of(8);
            assert!(need <= room, "the fake ring is full");
            let mut len = body.len() as u32;
            if busy {
                len |= BUSY_BIT;
            }
            if discard {
                len |= DISCARD_BIT;
            }
            let off = at % size;
            data[off..off + 4].copy_from_slice(&len.to_ne_bytes());
            data[off + 4..off + 8].copy_from_slice(&0u32.to_ne_bytes());
            for (i, b) in body.iter().enumerate() {
                data[(off + HEADER + i) % size] = *b;
            }
            self.producer.set(at + need);
            at
        }

        fn commit(&self, at: usize) {
            let mut data = self.data.borrow_mut();
            let off = at % data.len();
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
            data[off..off + 4].copy_from_slice(&(len & !BUSY_BIT).to_ne_bytes());
        }
    }

    impl Area for Fake {
        fn size(&self) -> usize {
            self.data.borrow().len()
        }
        fn producer_pos(&self) -> usize {
            self.producer.get()
        }
        fn consumer_pos(&self) -> usize {
            self.consumer.get()
        }
        fn set_consumer_pos(&self, pos: usize) {
            self.consumer.set(pos);
        }
        fn header(&self, offset: usize) -> u32 {
            let data = self.data.borrow();
            u32::from_ne_bytes(data[offset..offset + 4].try_into().unwrap())
        }
        fn copy(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.data.borrow()[offset..offset + len]);
        }
    }

    /// Every record copied out now, as (length prefix, bytes) pairs.
    fn read_all(cursor: &mut Cursor, ring: &Fake) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        while cursor.copy_next(ring, &mut buf) {}
        let mut out = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        out
    }

    fn body(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| n.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn a_record_that_runs_past_the_end_comes_out_whole() {
        // 4 KiB ring; the reader (a restarted agent) starts where the last
        // one stopped, 40 bytes before the end.
        let ring = Fake::new(4096, 3 * 4096 - 40);
        let mut cursor = Cursor::new(&ring);
        // Header at 4056, body 4064..4096 and 0..68: wraps.
        let first = body(1, 100);
        ring.push(&first, false, false);
        // The next one starts after the wrap.
        let second = body(7, 13);
        ring.push(&second, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![first, second]);
        // Each slot was released: the kernel's copy is ours.
        assert_eq!(ring.consumer.get(), ring.producer.get());
        assert_eq!(ring.consumer.get(), 3 * 4096 - 40 + 112 + 24);
        assert_eq!(read_all(&mut cursor, &ring), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_body_that_ends_exactly_at_the_end_or_a_header_at_the_end() {
        // A header in the area's last 8 bytes, its whole body at the start.
        let ring = Fake::new(4096, 4096 - 8);
        let mut cursor = Cursor::new(&ring);
        let a = body(3, 24);
        ring.push(&a, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![a]);
        // Then a record whose body ends exactly at the end.
        let at = ring.producer.get() % 4096;
        let b = body(9, 4096 - at - HEADER);
        ring.push(&b, false, false);
        let c = body(11, 5);
        ring.push(&c, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![b, c]);
    }

    #[test]
    fn discarded_records_are_skipped_and_released() {
        let ring = Fake::new(4096, 0);
        let mut cursor = Cursor::new(&ring);
        let a = body(1, 10);
        ring.push(&a, false, false);
        ring.push(&body(2, 50), false, true);
        ring.push(&body(3, 4000 - 96), false, true);
        let d = body(4, 30);
        ring.push(&d, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![a, d]);
        assert_eq!(ring.consumer.get(), ring.producer.get());
        // A lap of nothing but discarded records, across the end.
        for _ in 0..4 {
            for _ in 0..10 {
                ring.push(&body(5, 300), false, true);
            }
            assert_eq!(read_all(&mut cursor, &ring), Vec::<Vec<u8>>::new());
            assert_eq!(ring.consumer.get(), ring.producer.get());
        }
    }

    #[test]
    fn a_busy_record_stops_the_read_until_it_is_committed() {
        let ring = Fake::new(4096, 4096 - 16);
        let mut cursor = Cursor::new(&ring);
        let a = body(1, 8);
        ring.push(&a, false, false);
        let b = body(2, 40);
        let busy = ring.push(&b, true, false);
        let c = body(3, 8);
        ring.push(&c, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![a]);
        // Stopped at the busy record, its slot and the next kept.
        assert_eq!(ring.consumer.get(), busy);
        assert_eq!(read_all(&mut cursor, &ring), Vec::<Vec<u8>>::new());
        ring.commit(busy);
        assert_eq!(read_all(&mut cursor, &ring), vec![b, c]);
        assert_eq!(ring.consumer.get(), ring.producer.get());
    }

    #[test]
    fn many_laps_of_mixed_records_come_out_in_order() {
        let ring = Fake::new(4096, 0);
        let mut cursor = Cursor::new(&ring);
        let mut want = Vec::new();
        let mut got = Vec::new();
        for i in 0..5_000u32 {
            let len = 1 + (i as usize * 37) % 700;
            let discard = i % 7 == 3;
            let b = body(i as u8, len);
            ring.push(&b, false, discard);
            if !discard {
                want.push(b);
            }
            if i % 3 == 2 {
                got.extend(read_all(&mut cursor, &ring));
            }
        }
        got.extend(read_all(&mut cursor, &ring));
        assert_eq!(got.len(), want.len());
        assert!(got == want, "records differ");
        assert!(ring.producer.get() > 100 * 4096, "several laps");
    }

    #[test]
    fn an_impossible_length_skips_to_the_producer_instead_of_reading_past() {
        let ring = Fake::new(4096, 0);
        let mut cursor = Cursor::new(&ring);
        ring.push(&body(1, 8), false, false);
        ring.data.borrow_mut()[..4].copy_from_slice(&5000u32.to_ne_bytes());
        assert_eq!(read_all(&mut cursor, &ring), Vec::<Vec<u8>>::new());
        assert_eq!(ring.consumer.get(), ring.producer.get());
        let a = body(2, 20);
        ring.push(&a, false, false);
        assert_eq!(read_all(&mut cursor, &ring), vec![a]);
    }
}
