//! The encoders: [`Event::encode`] (guardian's side: the event and its
//! version 2 [`Header`] in one pass) and [`StaticRules::encode`] (a policy
//! module's side), both writing the bytes `postcard::to_slice` writes,
//! through one private [`Writer`].

use super::Header;
use crate::{Detail, Dev, Event, IpAddr, StaticRules};

/// A cursor that writes the wire format into a buffer (for
/// [`StaticRules::encode`]); every write returns `None` when the buffer is
/// full.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn byte(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.pos)? = b;
        self.pos += 1;
        Some(())
    }

    fn varint(&mut self, mut v: u64) -> Option<()> {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    fn bytes(&mut self, s: &[u8]) -> Option<()> {
        self.varint(s.len() as u64)?;
        let end = self.pos.checked_add(s.len())?;
        self.buf.get_mut(self.pos..end)?.copy_from_slice(s);
        self.pos = end;
        Some(())
    }

    fn strings(&mut self, list: &[&str]) -> Option<()> {
        self.varint(list.len() as u64)?;
        list.iter().try_for_each(|s| self.bytes(s.as_bytes()))
    }

    fn option<T>(
        &mut self,
        v: Option<T>,
        f: impl FnOnce(&mut Self, T) -> Option<()>,
    ) -> Option<()> {
        match v {
            None => self.byte(0),
            Some(v) => {
                self.byte(1)?;
                f(self, v)
            }
        }
    }

    fn ip(&mut self, ip: &IpAddr) -> Option<()> {
        match ip {
            IpAddr::V4(a) => {
                self.byte(0)?;
                self.raw(a)
            }
            IpAddr::V6(a) => {
                self.byte(1)?;
                self.raw(a)
            }
        }
    }
}

/// What the event encoder adds to [`Writer`].
impl Writer<'_> {
    #[inline(always)]
    fn raw(&mut self, s: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(s.len())?;
        self.buf.get_mut(self.pos..end)?.copy_from_slice(s);
        self.pos = end;
        Some(())
    }

    /// A length-prefixed byte string; returns the offset of its bytes.
    #[inline(always)]
    fn field(&mut self, s: &[u8]) -> Option<u32> {
        self.varint(u32::try_from(s.len()).ok()?.into())?;
        let at = u32::try_from(self.pos).ok()?;
        self.raw(s)?;
        Some(at)
    }

    /// `Option<bytes>`; returns the offset of its bytes or [`Header::ABSENT`].
    #[inline(always)]
    fn opt_field(&mut self, s: Option<&[u8]>) -> Option<u32> {
        match s {
            None => self.byte(0).map(|()| Header::ABSENT),
            Some(s) => {
                self.byte(1)?;
                self.field(s)
            }
        }
    }

    #[inline(always)]
    fn dev(&mut self, d: Dev) -> Option<()> {
        self.varint(d.major.into())?;
        self.varint(d.minor.into())
    }

    #[inline(always)]
    fn at(&self) -> Option<u32> {
        u32::try_from(self.pos).ok()
    }
}

impl Event<'_> {
    /// Encode the event into `out` (the same bytes as `postcard::to_slice`)
    /// and give its length and its version 2 [`Header`]: guardian's
    /// encoder, which learns every offset while writing, so the header
    /// costs nothing more. `None` if `out` is too small or a length does
    /// not fit in `u32`.
    pub fn encode(&self, out: &mut [u8]) -> Option<(usize, Header)> {
        let mut w = Writer { buf: out, pos: 0 };
        w.byte(self.kind as u8)?;
        w.byte(self.kernel as u8)?;
        w.byte(self.mode as u8)?;
        w.varint(self.time_ns)?;
        let hook_off = w.field(self.hook)?;
        let ids_off = w.at()?;
        for id in [self.pid, self.tid, self.ppid, self.uid, self.gid] {
            w.varint(id.into())?;
        }
        let exe_off = w.opt_field(self.exe)?;
        let exe_dev_off = w.at()?;
        w.dev(self.exe_dev)?;
        w.varint(self.exe_ino)?;
        let comm_off = w.field(self.comm)?;
        w.byte(u8::from(self.service))?;
        let detail_off = w.at()?;
        let (path_off, path_len) = match self.detail {
            Detail::None => {
                w.byte(0)?;
                (Header::ABSENT, 0)
            }
            Detail::File {
                path,
                dev,
                ino,
                flags,
                flags_text,
            } => {
                w.byte(1)?;
                let at = w.field(path)?;
                w.dev(dev)?;
                w.varint(ino)?;
                w.varint(flags.into())?;
                w.field(flags_text)?;
                (at, path.len())
            }
            Detail::Exec { path, env } => {
                w.byte(2)?;
                let at = w.field(path)?;
                w.opt_field(env)?;
                (at, path.len())
            }
            Detail::Library { path } => {
                w.byte(3)?;
                (w.field(path)?, path.len())
            }
            Detail::Ptrace {
                target_pid,
                target_exe,
            } => {
                w.byte(4)?;
                w.varint(target_pid.into())?;
                w.opt_field(target_exe)?;
                (Header::ABSENT, 0)
            }
            Detail::Connect { addr, port } => {
                w.byte(5)?;
                w.ip(&addr)?;
                w.varint(port.into())?;
                (Header::ABSENT, 0)
            }
        };
        let len = |s: Option<&[u8]>| s.map_or(Some(0), |s| u32::try_from(s.len()).ok());
        let header = Header {
            event_len: w.at()?,
            hook_off,
            hook_len: len(Some(self.hook))?,
            ids_off,
            exe_off,
            exe_len: len(self.exe)?,
            exe_dev_off,
            comm_off,
            comm_len: len(Some(self.comm))?,
            detail_off,
            path_off,
            path_len: u32::try_from(path_len).ok()?,
        };
        Some((w.pos, header))
    }
}

impl StaticRules<'_> {
    /// Encode into `buf` (the same bytes as `postcard::to_slice`), without
    /// serde: a policy module then carries no serializer. Returns the
    /// length, or `None` when `buf` is too small.
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer { buf, pos: 0 };
        w.strings(self.protected)?;
        w.option(self.writers, Writer::strings)?;
        w.option(self.egress, |w, list| {
            w.varint(list.len() as u64)?;
            list.iter().try_for_each(|e| {
                w.ip(&e.net)?;
                w.byte(e.prefix)?;
                w.varint(e.ports.0.into())?;
                w.varint(e.ports.1.into())
            })
        })?;
        w.option(self.service_exec, Writer::strings)?;
        w.option(self.library_dirs, Writer::strings)?;
        Some(w.pos)
    }
}
