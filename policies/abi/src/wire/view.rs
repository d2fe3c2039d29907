//! [`EventView`]: an encoded event read in place, each accessor decoding
//! only its field, with the positions found by one pass (ABI version 1)
//! or taken from the [`Header`] (version 2).

use super::{Header, Reader, header::header_word};
use crate::{Detail, Dev, Event, HEADER_SIZE, IpAddr, KernelVerdict, Kind, Mode};

/// What an [`EventView`] made of a too-short version 2 input reads: every
/// field absent or out of range, so every accessor reports malformed.
static BAD_HEADER: [u8; HEADER_SIZE] = [0xff; HEADER_SIZE];

/// Where the variable-length middle of an event lies, found by one pass
/// over it (see [`EventView`]).
#[derive(Clone, Copy, Debug, Default)]
struct Offsets {
    /// `hook` (its length varint).
    hook: u32,
    /// `pid`, the first of the five ids.
    ids: u32,
    /// `exe` (its option byte).
    exe: u32,
    /// `detail` (its variant varint).
    detail: u32,
}

/// An encoded event read in place: each accessor decodes only its field.
///
/// This is what makes a policy cheap in an interpreter. The event's wire
/// format is sequential (postcard varints and length-prefixed strings), so
/// reaching `exe` or the `detail` means stepping over what comes before
/// it; the view does that once, on the first accessor that needs it, with
/// an eight-bytes-at-a-time varint skip, and remembers where the fields
/// are. [`kind`](Self::kind), [`kernel`](Self::kernel),
/// [`mode`](Self::mode) and [`time_ns`](Self::time_ns) are at fixed
/// offsets and cost nothing more. Text fields borrow the input buffer.
///
/// Accessors never fail: on bytes that are not an event they return an
/// empty value and mark the view [`malformed`](Self::is_malformed), and
/// the SDK then answers [`Verdict::DECODE_ERROR`](crate::Verdict::DECODE_ERROR)
/// whatever the policy decided. guardian always sends well-formed events;
/// this only matters for a host bug or a hand-made test.
///
/// [`decode`](Self::decode) gives the whole [`Event`] when a policy needs
/// most of it (several times the cost of a few accessors).
///
/// Made with [`with_header`](Self::with_header) from what an ABI version 2
/// module receives, the view takes the positions from the [`Header`]
/// instead of the pass (no pass at all; string fields are sliced without
/// reading their length varints), checking only that each field it reads
/// lies inside the event.
#[derive(Debug)]
pub struct EventView<'a> {
    buf: &'a [u8],
    head: Option<&'a [u8; HEADER_SIZE]>,
    offsets: core::cell::Cell<Option<Offsets>>,
    malformed: core::cell::Cell<bool>,
}

/// The continuation bits of eight varint bytes.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

impl<'a> EventView<'a> {
    /// A view of the encoded event `bytes` (ABI version 1: nothing is read
    /// yet).
    #[inline(always)]
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self {
            buf: bytes,
            head: None,
            offsets: core::cell::Cell::new(None),
            malformed: core::cell::Cell::new(false),
        }
    }

    /// A view of what an ABI version 2 module receives: a [`Header`], then
    /// the encoded event. Input shorter than the header, or whose header
    /// gives another event length, is malformed at once.
    #[inline(always)]
    pub fn with_header(input: &'a [u8]) -> Self {
        let (head, buf) = match input.split_first_chunk::<HEADER_SIZE>() {
            Some((head, event)) => (head, event),
            None => (&BAD_HEADER, &input[..0]),
        };
        let v = Self {
            buf,
            head: Some(head),
            offsets: core::cell::Cell::new(None),
            malformed: core::cell::Cell::new(false),
        };
        if header_word(head, Header::EVENT_LEN) as usize != buf.len() || buf.is_empty() {
            v.fail();
        }
        v
    }

    /// The string at the header's `off`/`len` fields: `None` when absent,
    /// empty and malformed when outside the event.
    #[inline(always)]
    fn field(&self, head: &[u8; HEADER_SIZE], off: usize) -> Option<&'a [u8]> {
        let at = header_word(head, off);
        if at == Header::ABSENT {
            return None;
        }
        let len = header_word(head, off + 4);
        let s = (at as usize)
            .checked_add(len as usize)
            .and_then(|end| self.buf.get(at as usize..end));
        Some(self.or_fail(s))
    }

    /// A string the event always has: as [`field`](Self::field), absent
    /// is malformed.
    #[inline(always)]
    fn required(&self, head: &[u8; HEADER_SIZE], off: usize) -> &'a [u8] {
        let s = self.field(head, off);
        self.or_fail(s)
    }

    /// The position of `ids`, `exe_dev` and `detail`: from the header, or
    /// (version 1) from the pass.
    #[inline(always)]
    fn pos(&self, header_off: usize, v1: impl FnOnce(Offsets) -> Option<usize>) -> usize {
        match self.head {
            Some(h) => header_word(h, header_off) as usize,
            None => v1(self.offsets()).unwrap_or(usize::MAX),
        }
    }

    /// The encoded bytes.
    #[inline(always)]
    pub const fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether an accessor found the bytes not to be an event.
    #[inline(always)]
    pub fn is_malformed(&self) -> bool {
        self.malformed.get()
    }

    #[cold]
    #[inline(never)]
    fn fail(&self) {
        self.malformed.set(true);
    }

    /// A reader at `pos`.
    #[inline(always)]
    fn at(&self, pos: usize) -> Reader<'a> {
        Reader::at(self.buf, pos)
    }

    /// Eight bytes at `pos`, if there are eight.
    #[inline(always)]
    fn word(&self, pos: usize) -> Option<u64> {
        let w = self.buf.get(pos..)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*w))
    }

    /// The position after `n` varints starting at `pos`: after the `n`th
    /// byte with its high bit clear. Eight bytes at a time: a word's
    /// bytes that end a varint are counted at once (`popcnt`), and the
    /// `n`th is found by clearing the lower ones, so the cost does not
    /// depend on how long the varints are (`time_ns` takes nine bytes).
    #[inline(always)]
    fn skip_varints(&self, mut pos: usize, mut n: u32) -> Option<usize> {
        while let Some(w) = self.word(pos) {
            let mut stops = !w & HIGH_BITS;
            let found = stops.count_ones();
            if found >= n {
                while n > 1 {
                    stops &= stops - 1;
                    n -= 1;
                }
                return Some(pos + (stops.trailing_zeros() / 8) as usize + 1);
            }
            n -= found;
            pos += 8;
        }
        self.skip_varints_slow(pos, n)
    }

    /// [`skip_varints`](Self::skip_varints) in the last seven bytes.
    #[inline(never)]
    fn skip_varints_slow(&self, mut pos: usize, mut n: u32) -> Option<usize> {
        while n > 0 {
            if *self.buf.get(pos)? < 0x80 {
                n -= 1;
            }
            pos += 1;
        }
        Some(pos)
    }

    /// The position after the string (length varint, bytes) at `pos`.
    #[inline(always)]
    fn skip_bytes(&self, pos: usize) -> Option<usize> {
        let len = *self.buf.get(pos)?;
        if len < 0x80 {
            // Past the end is caught by the final check in find_offsets
            // or by the accessor that reads there.
            return Some(pos + 1 + usize::from(len));
        }
        let mut r = self.at(pos);
        let n = r.u32()? as usize;
        r.position().checked_add(n)
    }

    /// One pass from byte 3 to the detail.
    #[inline(always)]
    fn walk(&self) -> Option<Offsets> {
        // kind, kernel and mode are one byte each (enum tags below 128),
        // then time_ns.
        let hook = self.skip_varints(3, 1)?;
        let ids = self.skip_bytes(hook)?;
        // pid, tid, ppid, uid, gid.
        let exe = self.skip_varints(ids, 5)?;
        let after_exe = match *self.buf.get(exe)? {
            0 => exe + 1,
            1 => self.skip_bytes(exe + 1)?,
            _ => return None,
        };
        // exe_dev (major, minor), exe_ino, then comm and the service byte.
        let comm = self.skip_varints(after_exe, 3)?;
        let detail = self.skip_bytes(comm)? + 1;
        if detail >= self.buf.len() {
            return None;
        }
        Some(Offsets {
            hook: u32::try_from(hook).ok()?,
            ids: u32::try_from(ids).ok()?,
            exe: u32::try_from(exe).ok()?,
            detail: u32::try_from(detail).ok()?,
        })
    }

    #[inline(never)]
    fn find_offsets(&self) -> Offsets {
        let o = match self.walk() {
            Some(o) => o,
            None => {
                self.fail();
                // Every accessor reading at these finds nothing.
                Offsets {
                    hook: u32::MAX,
                    ids: u32::MAX,
                    exe: u32::MAX,
                    detail: u32::MAX,
                }
            }
        };
        self.offsets.set(Some(o));
        o
    }

    #[inline(always)]
    fn offsets(&self) -> Offsets {
        match self.offsets.get() {
            Some(o) => o,
            None => self.find_offsets(),
        }
    }

    #[inline(always)]
    fn or_fail<T: Default>(&self, v: Option<T>) -> T {
        match v {
            Some(v) => v,
            None => {
                self.fail();
                T::default()
            }
        }
    }

    /// What happened (byte 0).
    #[inline(always)]
    pub fn kind(&self) -> Kind {
        match self
            .buf
            .first()
            .and_then(|&k| Kind::ALL.get(usize::from(k)))
        {
            Some(&k) => k,
            None => {
                self.fail();
                Kind::Other
            }
        }
    }

    /// What the kernel did (byte 1).
    #[inline(always)]
    pub fn kernel(&self) -> KernelVerdict {
        match self.buf.get(1) {
            Some(0) => KernelVerdict::Allow,
            Some(1) => KernelVerdict::Alert,
            Some(2) => KernelVerdict::Deny,
            _ => {
                self.fail();
                KernelVerdict::Alert
            }
        }
    }

    /// The guard's mode (byte 2).
    #[inline(always)]
    pub fn mode(&self) -> Mode {
        match self.buf.get(2) {
            Some(0) => Mode::Enforce,
            Some(1) => Mode::Detect,
            _ => {
                self.fail();
                Mode::Detect
            }
        }
    }

    /// [`Event::time_ns`].
    #[inline(always)]
    pub fn time_ns(&self) -> u64 {
        self.or_fail(self.at(3).u64())
    }

    /// [`Event::hook`].
    pub fn hook(&self) -> &'a [u8] {
        if let Some(h) = self.head {
            return self.required(h, Header::HOOK_OFF);
        }
        let o = self.offsets();
        self.or_fail(self.at(o.hook as usize).bytes())
    }

    /// The five ids, in encoding order: `[pid, tid, ppid, uid, gid]`.
    pub fn ids(&self) -> [u32; 5] {
        let mut r = self.at(self.pos(Header::IDS_OFF, |o| Some(o.ids as usize)));
        let mut out = [0; 5];
        for v in &mut out {
            *v = self.or_fail(r.u32());
        }
        out
    }

    /// [`Event::pid`].
    #[inline(always)]
    pub fn pid(&self) -> u32 {
        self.or_fail(
            self.at(self.pos(Header::IDS_OFF, |o| Some(o.ids as usize)))
                .u32(),
        )
    }

    /// [`Event::uid`].
    pub fn uid(&self) -> u32 {
        self.ids()[3]
    }

    /// [`Event::exe`].
    #[inline(always)]
    pub fn exe(&self) -> Option<&'a [u8]> {
        if let Some(h) = self.head {
            return self.field(h, Header::EXE_OFF);
        }
        self.or_fail(self.at(self.offsets().exe as usize).opt_bytes())
    }

    /// [`Event::service`]: the byte before the detail.
    #[inline(always)]
    pub fn service(&self) -> bool {
        let at = self
            .pos(Header::DETAIL_OFF, |o| Some(o.detail as usize))
            .wrapping_sub(1);
        match self.buf.get(at) {
            Some(0) => false,
            Some(1) => true,
            _ => {
                self.fail();
                false
            }
        }
    }

    /// [`Event::exe_dev`], [`Event::exe_ino`] and [`Event::comm`].
    pub fn exe_dev_ino_comm(&self) -> (Dev, u64, &'a [u8]) {
        if let Some(h) = self.head {
            let mut r = self.at(header_word(h, Header::EXE_DEV_OFF) as usize);
            let dev_ino = (|| Some((r.dev()?, r.u64()?)))();
            let (dev, ino) = self.or_fail(dev_ino);
            return (dev, ino, self.required(h, Header::COMM_OFF));
        }
        let mut r = self.at(self.offsets().exe as usize);
        let v = (|| {
            r.opt_bytes()?;
            Some((r.dev()?, r.u64()?, r.bytes()?))
        })();
        match v {
            Some(v) => v,
            None => {
                self.fail();
                (Dev::default(), 0, b"")
            }
        }
    }

    /// [`Event::detail`].
    #[inline(always)]
    pub fn detail(&self) -> Detail<'a> {
        match self
            .at(self.pos(Header::DETAIL_OFF, |o| Some(o.detail as usize)))
            .detail()
        {
            Some(d) => d,
            None => {
                self.fail();
                Detail::None
            }
        }
    }

    /// [`Event::path`]: the file, the executed binary or the library,
    /// without decoding the rest of the detail.
    #[inline(always)]
    pub fn path(&self) -> Option<&'a [u8]> {
        if let Some(h) = self.head {
            return self.field(h, Header::PATH_OFF);
        }
        let mut r = self.at(self.offsets().detail as usize);
        match r.byte() {
            Some(1..=3) => Some(self.or_fail(r.bytes())),
            Some(0 | 4 | 5) => None,
            _ => {
                self.fail();
                None
            }
        }
    }

    /// The destination of a [`Kind::Connect`] event, without building the
    /// whole [`Detail`]; `None` for any other detail.
    #[inline(always)]
    pub fn connect(&self) -> Option<(IpAddr, u16)> {
        let mut r = self.at(self.pos(Header::DETAIL_OFF, |o| Some(o.detail as usize)));
        match r.byte() {
            Some(5) => {
                let v = r.ip().and_then(|a| Some((a, r.u16()?)));
                if v.is_none() {
                    self.fail();
                }
                v
            }
            Some(0..=4) => None,
            _ => {
                self.fail();
                None
            }
        }
    }

    /// The whole event (`None` if the bytes are not one).
    pub fn decode(&self) -> Option<Event<'a>> {
        let e = Event::decode(self.buf);
        if e.is_none() {
            self.fail();
        }
        e
    }
}
