//! Reading the kernel's ring buffer: each record copied out and its slot
//! released at once, the records worked off after.
//!
//! Why: the kernel drops a record when the ring has no room for it (counted
//! as `ringbuf_drops`), and a slot is free again only once the reader has
//! moved past it. Reading record by record, the reader moved past a record
//! only after it was decoded, judged and written (about 2 µs), so in a
//! burst the backlog sat in the ring and left it less room for what came
//! next. Copying a record out takes tens of nanoseconds: the ring is
//! emptied whenever the reader runs (and again every [`STEP`] records
//! while it works), and the backlog waits in the reader's own buffer. The
//! ring then only has to hold what arrives while the reader is off the
//! CPU, and the ring can be smaller (`docs/footprint.md` has the figures).
//!
//! The buffer is bounded ([`RingReader::new`]): past the bound, records
//! stay in the ring, and if that fills the kernel drops and counts, as
//! without the buffer. It grows only while there is a backlog and is given
//! back when the backlog is worked off, so an idle agent holds
//! [`KEEP`] bytes of it at most (a ring's pages are resident for as long as
//! it is mapped).

use super::EventRing;

/// Records worked off between two looks at the ring.
pub const STEP: usize = 64;

/// Buffer bytes kept between bursts; a larger buffer is given back.
pub const KEEP: usize = 64 * 1024;

/// The length that precedes each record copied out.
const LEN: usize = size_of::<u32>();

/// The ring buffer's reader (see the module's opening).
#[derive(Debug)]
pub struct RingReader {
    /// Records copied out: a `u32` length (native order), then the record.
    buf: Vec<u8>,
    /// Where the next record to work off starts in `buf`.
    head: usize,
    /// The bound on bytes waiting in `buf`.
    max_bytes: usize,
    /// The most bytes that waited at once.
    peak: usize,
}

impl RingReader {
    /// A reader that holds at most about `max_bytes` of copied-out records
    /// (one record may go past it).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            head: 0,
            max_bytes,
            peak: 0,
        }
    }

    /// The most bytes of records that waited in the reader at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak
    }

    /// Hand every record waiting, in the ring or copied out, to `f`, oldest
    /// first, until both are empty; returns how many were handed.
    pub fn drain(&mut self, ring: &mut EventRing, f: impl FnMut(&[u8])) -> usize {
        self.drain_from(ring, f)
    }

    /// [`RingReader::drain`] from any source of records.
    fn drain_from(&mut self, ring: &mut impl Source, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            self.take(ring);
            if self.head >= self.buf.len() {
                break;
            }
            for _ in 0..STEP {
                let at = self.head;
                if at >= self.buf.len() {
                    break;
                }
                let record = self
                    .buf
                    .get(at..at + LEN)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| u32::from_ne_bytes(b) as usize)
                    .and_then(|len| Some((len, self.buf.get(at + LEN..at + LEN + len)?)));
                let Some((len, record)) = record else {
                    // Cannot happen (`take` writes whole records); if it
                    // did, the rest is dropped rather than looped on.
                    self.head = self.buf.len();
                    break;
                };
                self.head = at + LEN + len;
                f(record);
                n += 1;
            }
        }
        self.buf.clear();
        self.head = 0;
        if self.buf.capacity() > KEEP {
            // The burst is over: its buffer goes back to the allocator
            // (and, being large, to the kernel, see `crate::memory`).
            self.buf = Vec::new();
        }
        n
    }

    /// Copy out what waits in the ring, as far as the bound allows; each
    /// slot is released as soon as its record is copied.
    fn take(&mut self, ring: &mut impl Source) {
        if self.head > 0 && self.head * 2 >= self.buf.len() {
            // Most of the buffer is worked off: move the rest to the front
            // (amortised, each byte moves at most once per halving).
            self.buf.drain(..self.head);
            self.head = 0;
        }
        while self.buf.len() - self.head < self.max_bytes && ring.copy_next(&mut self.buf) {}
        self.peak = self.peak.max(self.buf.len() - self.head);
    }
}

/// Where records come from: the ring buffer (tests use a queue).
trait Source {
    /// Append the next record to `buf` as its length and its bytes, and
    /// release it; false when none is waiting.
    fn copy_next(&mut self, buf: &mut Vec<u8>) -> bool;
}

impl Source for EventRing {
    fn copy_next(&mut self, buf: &mut Vec<u8>) -> bool {
        // Released as soon as it is copied (`ring.rs`).
        EventRing::copy_next(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A ring that gets `refill` more records each time the reader looks.
    struct Fake {
        waiting: VecDeque<Vec<u8>>,
        next: u32,
        refill: u32,
        looks: u32,
    }

    impl Fake {
        fn fill(&mut self, n: u32) {
            for _ in 0..n {
                self.waiting
                    .push_back(self.next.to_le_bytes().repeat(1 + self.next as usize % 5));
                self.next += 1;
            }
        }
    }

    impl Source for Fake {
        fn copy_next(&mut self, buf: &mut Vec<u8>) -> bool {
            if self.waiting.is_empty() && self.looks > 0 {
                self.looks -= 1;
                let n = self.refill;
                self.fill(n);
            }
            let Some(r) = self.waiting.pop_front() else {
                return false;
            };
            buf.extend_from_slice(&(r.len() as u32).to_ne_bytes());
            buf.extend_from_slice(&r);
            true
        }
    }

    #[test]
    fn every_record_comes_out_once_in_order_and_the_buffer_is_given_back() {
        let mut ring = Fake {
            waiting: VecDeque::new(),
            next: 0,
            refill: 1000,
            looks: 30,
        };
        ring.fill(20_000);
        // A bound smaller than the backlog (about 320 KiB): records wait
        // in the ring too.
        let bound = 256 * 1024;
        let mut reader = RingReader::new(bound);
        let mut seen = Vec::new();
        let n = reader.drain_from(&mut ring, |r| {
            let v = u32::from_le_bytes(r[..4].try_into().unwrap());
            assert_eq!(r, v.to_le_bytes().repeat(1 + v as usize % 5));
            seen.push(v);
        });
        assert_eq!(n, 50_000);
        assert_eq!(seen, (0..50_000).collect::<Vec<_>>());
        assert!(reader.peak_bytes() >= bound);
        assert!(reader.peak_bytes() < bound + 64);
        // Larger than what is kept between bursts: given back.
        assert_eq!(reader.buf.capacity(), 0);
        // Nothing waiting: nothing handed.
        assert_eq!(reader.drain_from(&mut ring, |_| panic!("no record")), 0);
    }
}
