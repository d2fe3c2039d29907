//! The event's wire format, read and written by hand.
//!
//! The bytes are postcard's (see [below](#compatibility-with-postcard));
//! this module reads and writes them without serde, because a policy runs
//! in an interpreter where every instruction counts, and because a policy
//! module then carries no serializer.
//!
//! | file | owns |
//! |---|---|
//! | `decode.rs` | [`Reader`], the cursor over encoded bytes, and [`Event::decode`](crate::Event::decode) |
//! | `encode.rs` | the writer behind [`Event::encode`](crate::Event::encode) (event and version 2 header in one pass) and [`StaticRules::encode`](crate::StaticRules::encode) |
//! | `header.rs` | [`Header`], the version 2 table of field offsets in front of the event |
//! | `view.rs` | [`EventView`], an encoded event read in place, field by field |
//! | `compare.rs` | [`has_prefix`] and [`bytes_eq`], byte comparisons cheap in an interpreter |
//! | `tests.rs` | every encoder and decoder against postcard's own |
//!
//! # Compatibility with postcard
//!
//! The hand-written decoder reads the same bytes as `postcard::from_bytes::<Event>` and gives the
//! same [`Event`](crate::Event) for every event guardian encodes; it exists because it is
//! about ten times cheaper inside an interpreter. The serde-derived decoder
//! goes through visitors, `Result`s of postcard's error type and several
//! copies of the 150-byte struct per field, all of which wasmi executes
//! instruction by instruction; this one is straight-line code with a
//! one-byte fast path for varints (every enum tag, most ids and lengths).
//!
//! Differences from postcard, only on input guardian never produces: a
//! string or sequence length is a `u32` varint, so it must fit in `u32`
//! and be encoded in at most five bytes. That is postcard's own rule for
//! `usize` on wasm32, where modules run; postcard on a 64-bit host also
//! takes lengths of six to ten bytes (zero written as `80 80 80 80 80 00`,
//! say), which guardian's encoder never writes (it writes the shortest
//! varint). An unknown `kind` is an error, as it is for postcard.

mod compare;
mod decode;
mod encode;
mod header;
mod view;

pub use compare::{bytes_eq, has_prefix};
pub use decode::Reader;
pub use header::Header;
pub use view::EventView;

#[cfg(test)]
mod tests;
