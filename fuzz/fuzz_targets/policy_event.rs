//! The policy event wire format (`policies/abi/src/wire/`): the
//! hand-written decoder every policy module runs on the bytes guardian
//! writes into its memory, its in-place [`EventView`] and the version 2
//! [`Header`]. Never a panic, on any bytes.
//!
//! The hand-written decoder must agree with postcard's serde decoder (the
//! format's definition, and what guardian encodes with) on every input
//! but one documented case (a length varint longer than five bytes, which
//! only postcard on a 64-bit host reads): a module and the host must never
//! read one event two ways. On what
//! decodes, guardian's encoder (`Event::encode`) writes postcard's bytes
//! and the header `Header::of` finds; on those canonical bytes every
//! accessor of the view, with and without the header, reads the decoded
//! fields and reports nothing malformed.

#![no_main]

use guardian_policy_abi::{
    Detail, Dev, Event, IpAddr, KernelVerdict, Kind, Mode,
    wire::{EventView, Header},
};
use libfuzzer_sys::fuzz_target;

/// What the accessors give, in one comparable value.
type Fields<'a> = (
    (Kind, KernelVerdict, Mode, u64, &'a [u8]),
    ([u32; 5], u32, u32, Option<&'a [u8]>, bool),
    (
        (Dev, u64, &'a [u8]),
        Detail<'a>,
        Option<&'a [u8]>,
        Option<(IpAddr, u16)>,
    ),
    Option<Event<'a>>,
);

/// Every accessor of a view.
fn read_all<'a>(v: &EventView<'a>) -> Fields<'a> {
    (
        (v.kind(), v.kernel(), v.mode(), v.time_ns(), v.hook()),
        (v.ids(), v.pid(), v.uid(), v.exe(), v.service()),
        (v.exe_dev_ino_comm(), v.detail(), v.path(), v.connect()),
        v.decode(),
    )
}

/// The same, from a decoded event.
fn fields<'a>(e: &Event<'a>) -> Fields<'a> {
    let connect = match e.detail {
        Detail::Connect { addr, port } => Some((addr, port)),
        _ => None,
    };
    (
        (e.kind, e.kernel, e.mode, e.time_ns, e.hook),
        (
            [e.pid, e.tid, e.ppid, e.uid, e.gid],
            e.pid,
            e.uid,
            e.exe,
            e.service,
        ),
        ((e.exe_dev, e.exe_ino, e.comm), e.detail, e.path(), connect),
        Some(*e),
    )
}

/// The one documented difference (`wire/mod.rs`): a length varint of more
/// than five bytes, which postcard takes on a 64-bit host (not on wasm32)
/// and the module's decoder refuses. Such a varint needs at least five
/// continuation bytes (high bit set) in a row among the bytes postcard
/// read.
fn documented_difference(data: &[u8]) -> bool {
    let Ok((_, rest)) = postcard::take_from_bytes::<Event<'_>>(data) else {
        return false;
    };
    let read = &data[..data.len() - rest.len()];
    read.windows(5).any(|w| w.iter().all(|b| *b >= 0x80))
}

fuzz_target!(|data: &[u8]| {
    let wire = Event::decode(data);
    let serde = postcard::from_bytes::<Event<'_>>(data).ok();
    if wire != serde {
        assert!(
            wire.is_none() && documented_difference(data),
            "the module's decoder and postcard disagree: {wire:?} / {serde:?}"
        );
    }

    // Arbitrary bytes through the view and the header: no panic.
    let _ = read_all(&EventView::new(data));
    let _ = read_all(&EventView::with_header(data));
    let _ = Header::of(data);

    let Some(e) = wire else {
        return;
    };
    let mut buf = vec![0u8; data.len() + 64];
    let Some((n, head)) = e.encode(&mut buf) else {
        panic!("a decoded event does not encode into {} bytes", buf.len());
    };
    let canonical = &buf[..n];
    assert_eq!(postcard::to_allocvec(&e).ok().as_deref(), Some(canonical));
    assert_eq!(Event::decode(canonical), Some(e));
    assert_eq!(Header::of(canonical), Some(head));
    let v1 = EventView::new(canonical);
    assert_eq!(read_all(&v1), fields(&e));
    assert!(!v1.is_malformed());
    let mut with = head.to_bytes().to_vec();
    with.extend_from_slice(canonical);
    let v2 = EventView::with_header(&with);
    assert_eq!(read_all(&v2), fields(&e));
    assert!(!v2.is_malformed());
});
