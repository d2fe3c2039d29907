//! The `.wasm` binary's custom sections, read and written on the bytes
//! (without compiling): the data document a Rego policy carries in
//! [`DATA_SECTION`].

use super::DATA_SECTION;

/// The bytes of a custom section, read from the module's binary (wasmi
/// keeps custom sections; this works on the bytes so that tools can read
/// it without compiling).
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut rest = wasm.get(8..)?;
    while let Some((&id, after)) = rest.split_first() {
        let (size, after) = leb_u32(after)?;
        let (body, next) = after.split_at_checked(size as usize)?;
        if id == 0 {
            let (n, b) = leb_u32(body)?;
            let (section_name, data) = b.split_at_checked(n as usize)?;
            if section_name == name.as_bytes() {
                return Some(data);
            }
        }
        rest = next;
    }
    None
}

fn leb_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let mut v: u32 = 0;
    for (i, byte) in b.iter().enumerate().take(5) {
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, b.get(i + 1..)?));
        }
    }
    None
}

/// `wasm` with `data` (a JSON document) as its [`DATA_SECTION`], replacing
/// any there was: what `guardian policy rego` writes before signing.
pub fn with_data(wasm: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wasm.len() + data.len() + 32);
    out.extend_from_slice(wasm.get(..8).unwrap_or(wasm));
    let mut rest = wasm.get(8..).unwrap_or(&[]);
    // Copy every section but an old data section.
    while let Some((&id, after)) = rest.split_first() {
        let Some((size, body_start)) = leb_u32(after) else {
            out.extend_from_slice(rest);
            break;
        };
        let Some((body, next)) = body_start.split_at_checked(size as usize) else {
            out.extend_from_slice(rest);
            break;
        };
        let is_data = id == 0
            && leb_u32(body)
                .and_then(|(n, b)| b.get(..n as usize))
                .is_some_and(|n| n == DATA_SECTION.as_bytes());
        if !is_data {
            let header_len = rest.len() - next.len() - body.len();
            out.extend_from_slice(rest.get(..header_len + body.len()).unwrap_or(rest));
        }
        rest = next;
    }
    let mut payload = Vec::with_capacity(data.len() + 16);
    push_leb(&mut payload, DATA_SECTION.len() as u32);
    payload.extend_from_slice(DATA_SECTION.as_bytes());
    payload.extend_from_slice(data);
    out.push(0);
    push_leb(&mut out, payload.len() as u32);
    out.extend_from_slice(&payload);
    out
}

fn push_leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmi::{Engine, Module};

    #[test]
    fn data_section_round_trips() {
        let wasm = wat::parse_str("(module (memory 1))").unwrap();
        assert_eq!(custom_section(&wasm, DATA_SECTION), None);
        let with = with_data(&wasm, br#"{"a":1}"#);
        assert_eq!(
            custom_section(&with, DATA_SECTION),
            Some(&br#"{"a":1}"#[..])
        );
        // Replaced, not added twice.
        let again = with_data(&with, b"[]");
        assert_eq!(custom_section(&again, DATA_SECTION), Some(&b"[]"[..]));
        assert_eq!(again.len(), with.len() - 5);
        // Still a module wasmi loads.
        let engine = Engine::default();
        assert!(Module::new(&engine, &again).is_ok());
    }
}
