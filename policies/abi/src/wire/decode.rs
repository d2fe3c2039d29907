//! The decoder: [`Reader`], a cursor over encoded bytes that checks every
//! value as postcard does, and [`Event::decode`] on top of it. Straight-line
//! code with a one-byte fast path for varints (every enum tag, most ids and
//! lengths).

use crate::{Detail, Dev, Event, IpAddr, KernelVerdict, Kind, Mode};

/// A cursor over encoded bytes. Every read returns `None` past the end or
/// on a malformed value.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    #[inline(always)]
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// A cursor at `pos` in `buf`.
    #[inline(always)]
    pub const fn at(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// The offset of the next byte.
    #[inline(always)]
    pub const fn position(&self) -> usize {
        self.pos
    }

    /// One byte (`u8`).
    #[inline(always)]
    pub fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A `bool`: byte 0 or 1.
    #[inline(always)]
    pub fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// An unsigned LEB128 varint of at most `max_bytes` bytes whose last
    /// byte is at most `last_max` (postcard's checks for the type).
    #[inline(always)]
    fn varint(&mut self, max_bytes: u32, last_max: u8) -> Option<u64> {
        let b = self.byte()?;
        if b < 0x80 {
            return Some(u64::from(b));
        }
        // Two bytes (values below 16384: ports, most lengths and ids) stay
        // inline too; every integer type allows at least three bytes, so
        // no range check is needed here.
        if let Some(&b2) = self.buf.get(self.pos)
            && b2 < 0x80
        {
            self.pos += 1;
            return Some(u64::from(b & 0x7f) | u64::from(b2) << 7);
        }
        self.varint_slow(u64::from(b & 0x7f), max_bytes, last_max)
    }

    #[inline(never)]
    fn varint_slow(&mut self, mut out: u64, max_bytes: u32, last_max: u8) -> Option<u64> {
        let mut i = 1;
        while i < max_bytes {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == max_bytes - 1 && b > last_max {
                    return None;
                }
                return Some(out);
            }
            i += 1;
        }
        None
    }

    /// A `u16` varint.
    #[inline(always)]
    pub fn u16(&mut self) -> Option<u16> {
        self.varint(3, 0x03).map(|v| v as u16)
    }

    /// A `u32` varint (also enum tags and lengths).
    #[inline(always)]
    pub fn u32(&mut self) -> Option<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    /// A `u64` varint.
    #[inline(always)]
    pub fn u64(&mut self) -> Option<u64> {
        self.varint(10, 0x01)
    }

    /// A byte string or string: a varint length, then the bytes.
    #[inline(always)]
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let end = self.pos.checked_add(len)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// `Option<bytes>`.
    #[inline(always)]
    pub fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.bytes().map(Some),
            _ => None,
        }
    }

    /// `N` raw bytes (a fixed array of `u8`).
    #[inline(always)]
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        s.try_into().ok()
    }

    /// A [`Dev`].
    #[inline(always)]
    pub fn dev(&mut self) -> Option<Dev> {
        Some(Dev {
            major: self.u32()?,
            minor: self.u32()?,
        })
    }

    /// An [`IpAddr`].
    #[inline(always)]
    pub fn ip(&mut self) -> Option<IpAddr> {
        match self.u32()? {
            0 => self.array::<4>().map(IpAddr::V4),
            1 => self.array::<16>().map(IpAddr::V6),
            _ => None,
        }
    }

    /// A [`Kind`].
    #[inline(always)]
    pub fn kind(&mut self) -> Option<Kind> {
        let k = self.u32()?;
        Kind::ALL.get(k as usize).copied()
    }

    /// A [`Detail`].
    #[inline(always)]
    pub fn detail(&mut self) -> Option<Detail<'a>> {
        Some(match self.u32()? {
            0 => Detail::None,
            1 => Detail::File {
                path: self.bytes()?,
                dev: self.dev()?,
                ino: self.u64()?,
                flags: self.u32()?,
                flags_text: self.bytes()?,
            },
            2 => Detail::Exec {
                path: self.bytes()?,
                env: self.opt_bytes()?,
            },
            3 => Detail::Library {
                path: self.bytes()?,
            },
            4 => Detail::Ptrace {
                target_pid: self.u32()?,
                target_exe: self.opt_bytes()?,
            },
            5 => Detail::Connect {
                addr: self.ip()?,
                port: self.u16()?,
            },
            _ => return None,
        })
    }

    /// A whole [`Event`].
    pub fn event(&mut self) -> Option<Event<'a>> {
        Some(Event {
            kind: self.kind()?,
            kernel: match self.u32()? {
                0 => KernelVerdict::Allow,
                1 => KernelVerdict::Alert,
                2 => KernelVerdict::Deny,
                _ => return None,
            },
            mode: match self.u32()? {
                0 => Mode::Enforce,
                1 => Mode::Detect,
                _ => return None,
            },
            time_ns: self.u64()?,
            hook: self.bytes()?,
            pid: self.u32()?,
            tid: self.u32()?,
            ppid: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            exe: self.opt_bytes()?,
            exe_dev: self.dev()?,
            exe_ino: self.u64()?,
            comm: self.bytes()?,
            service: self.bool()?,
            detail: self.detail()?,
        })
    }
}

impl<'a> Event<'a> {
    /// Decode an event from its encoding (what `guardian_evaluate`
    /// receives), borrowing the text fields; `None` if the bytes are not an
    /// event. The same result as `postcard::from_bytes`, much cheaper in an
    /// interpreter (see [`wire`](crate::wire)). Bytes after the event are
    /// ignored, as postcard does.
    pub fn decode(bytes: &'a [u8]) -> Option<Event<'a>> {
        Reader::new(bytes).event()
    }
}
