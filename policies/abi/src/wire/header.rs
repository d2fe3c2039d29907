//! The version 2 [`Header`]: twelve little-endian `u32`s in front of the
//! event that say where its fields lie, made by guardian and read by
//! [`EventView::with_header`](super::EventView::with_header).

use super::Reader;
use crate::HEADER_SIZE;

/// The version 2 header: where the fields of the event that follows it
/// lie, so that a module reads them without stepping over the
/// variable-length middle of the event (`policies/ABI.md`, §4).
///
/// guardian computes it natively from the encoded event and writes it,
/// [`HEADER_SIZE`] bytes of twelve little-endian `u32`s, in front of the
/// event for modules of ABI version 2. Offsets count from the event's
/// first byte (its `kind`), not from the header. A string field is given
/// as the offset of its first UTF-8 byte (after the length varint) and
/// its length; an absent one (`exe` is `None`, a `detail` without a path)
/// as offset [`Header::ABSENT`] and length 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Length of the encoded event after the header, bytes.
    pub event_len: u32,
    /// `hook`: offset of its bytes.
    pub hook_off: u32,
    /// `hook`: length.
    pub hook_len: u32,
    /// `pid` (a varint; `tid`, `ppid`, `uid`, `gid` follow).
    pub ids_off: u32,
    /// `exe`: offset of its bytes, or [`Header::ABSENT`].
    pub exe_off: u32,
    /// `exe`: length (0 when absent).
    pub exe_len: u32,
    /// `exe_dev.major` (a varint; `exe_dev.minor` and `exe_ino` follow).
    pub exe_dev_off: u32,
    /// `comm`: offset of its bytes.
    pub comm_off: u32,
    /// `comm`: length.
    pub comm_len: u32,
    /// `detail`: its variant index (a varint). The `service` byte is the
    /// byte before it.
    pub detail_off: u32,
    /// The detail's `path` (variants File, Exec, Library): offset of its
    /// bytes, or [`Header::ABSENT`].
    pub path_off: u32,
    /// The detail's `path`: length (0 when absent).
    pub path_len: u32,
}

impl Header {
    /// The offset of an absent string field.
    pub const ABSENT: u32 = u32::MAX;

    /// Byte offsets of the fields inside the header (each a `u32` LE).
    pub const EVENT_LEN: usize = 0;
    /// See [`Header::EVENT_LEN`].
    pub const HOOK_OFF: usize = 4;
    /// See [`Header::EVENT_LEN`].
    pub const HOOK_LEN: usize = 8;
    /// See [`Header::EVENT_LEN`].
    pub const IDS_OFF: usize = 12;
    /// See [`Header::EVENT_LEN`].
    pub const EXE_OFF: usize = 16;
    /// See [`Header::EVENT_LEN`].
    pub const EXE_LEN: usize = 20;
    /// See [`Header::EVENT_LEN`].
    pub const EXE_DEV_OFF: usize = 24;
    /// See [`Header::EVENT_LEN`].
    pub const COMM_OFF: usize = 28;
    /// See [`Header::EVENT_LEN`].
    pub const COMM_LEN: usize = 32;
    /// See [`Header::EVENT_LEN`].
    pub const DETAIL_OFF: usize = 36;
    /// See [`Header::EVENT_LEN`].
    pub const PATH_OFF: usize = 40;
    /// See [`Header::EVENT_LEN`].
    pub const PATH_LEN: usize = 44;

    /// The header of an encoded event: one pass over it, checking it as
    /// [`Event::decode`](crate::Event::decode) does; `None` if the bytes are not one event
    /// (trailing bytes included: the header describes exactly `event`).
    pub fn of(event: &[u8]) -> Option<Header> {
        fn u(n: usize) -> Option<u32> {
            u32::try_from(n).ok()
        }
        let mut r = Reader::new(event);
        r.kind()?;
        if r.u32()? > 2 || r.u32()? > 1 {
            return None;
        }
        r.u64()?;
        let hook = r.bytes()?;
        let hook_off = r.position() - hook.len();
        let ids_off = r.position();
        for _ in 0..5 {
            r.u32()?;
        }
        let (exe_off, exe_len) = match r.opt_bytes()? {
            Some(e) => (u(r.position() - e.len())?, u(e.len())?),
            None => (Self::ABSENT, 0),
        };
        let exe_dev_off = r.position();
        r.dev()?;
        r.u64()?;
        let comm = r.bytes()?;
        let comm_off = r.position() - comm.len();
        r.bool()?;
        let detail_off = r.position();
        let mut p = r;
        let (path_off, path_len) = match p.u32()? {
            1..=3 => {
                let path = p.bytes()?;
                (u(p.position() - path.len())?, u(path.len())?)
            }
            _ => (Self::ABSENT, 0),
        };
        r.detail()?;
        if r.position() != event.len() {
            return None;
        }
        Some(Header {
            event_len: u(event.len())?,
            hook_off: u(hook_off)?,
            hook_len: u(hook.len())?,
            ids_off: u(ids_off)?,
            exe_off,
            exe_len,
            exe_dev_off: u(exe_dev_off)?,
            comm_off: u(comm_off)?,
            comm_len: u(comm.len())?,
            detail_off: u(detail_off)?,
            path_off,
            path_len,
        })
    }

    /// The twelve fields in order.
    const fn words(&self) -> [u32; HEADER_SIZE / 4] {
        [
            self.event_len,
            self.hook_off,
            self.hook_len,
            self.ids_off,
            self.exe_off,
            self.exe_len,
            self.exe_dev_off,
            self.comm_off,
            self.comm_len,
            self.detail_off,
            self.path_off,
            self.path_len,
        ]
    }

    /// The bytes guardian writes in front of the event.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        for (chunk, w) in out.chunks_exact_mut(4).zip(self.words()) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Read a header from its bytes (no check that it fits any event).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let w = |at: usize| header_word(b, at);
        Header {
            event_len: w(Self::EVENT_LEN),
            hook_off: w(Self::HOOK_OFF),
            hook_len: w(Self::HOOK_LEN),
            ids_off: w(Self::IDS_OFF),
            exe_off: w(Self::EXE_OFF),
            exe_len: w(Self::EXE_LEN),
            exe_dev_off: w(Self::EXE_DEV_OFF),
            comm_off: w(Self::COMM_OFF),
            comm_len: w(Self::COMM_LEN),
            detail_off: w(Self::DETAIL_OFF),
            path_off: w(Self::PATH_OFF),
            path_len: w(Self::PATH_LEN),
        }
    }
}

/// The `u32` at byte `at` of a header (one `i32.load` in wasm).
#[inline(always)]
pub(super) fn header_word(h: &[u8; HEADER_SIZE], at: usize) -> u32 {
    match h.get(at..).and_then(<[u8]>::first_chunk::<4>) {
        Some(w) => u32::from_le_bytes(*w),
        None => Header::ABSENT,
    }
}
