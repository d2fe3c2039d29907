//! The notification rung's records: fanotify event metadata with its FID
//! info record, parsed from the bytes of one `read`, and the file handle
//! and filesystem id of a watched inode, encoded as fanotify reports them.
//! Pure parsing and two system calls; no marks, no judging.

use std::{ffi::c_int, fs::File, io, os::fd::AsRawFd as _};

use super::os_err;

/// `AT_HANDLE_FID` (kernel 6.5): encode the handle the way fanotify does,
/// also on filesystems that cannot decode handles (`include/uapi/linux/fcntl.h`).
const AT_HANDLE_FID: c_int = 0x200;

/// `MAX_HANDLE_SZ`: the largest `f_handle` the kernel encodes.
const MAX_HANDLE: usize = 128;

/// A file handle as fanotify reports it in a FID record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fid {
    /// The filesystem's id (`statfs` `f_fsid`).
    pub fsid: [u8; 8],
    /// `file_handle.handle_type`.
    pub handle_type: i32,
    /// `file_handle.f_handle`.
    pub handle: Vec<u8>,
}

/// One fanotify event record, as far as this rung needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `FAN_*` bits.
    pub mask: u64,
    /// The process (thread group id), 0 when outside our pid namespace.
    pub pid: i32,
    /// The file, from the `FAN_EVENT_INFO_TYPE_FID` record.
    pub fid: Option<Fid>,
}

/// A record that could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The metadata version is not the one this code knows: nothing read
    /// from this group can be trusted.
    Version(u8),
    /// A length that does not fit; the rest of the read is dropped (the
    /// next read starts at a record again).
    Malformed(String),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parse the FID record among the info records of one event (the bytes
/// after the metadata, up to `event_len`).
fn parse_info(mut info: &[u8]) -> Result<Option<Fid>, ParseError> {
    let bad = |what: String| Err(ParseError::Malformed(what));
    let mut fid = None;
    while !info.is_empty() {
        // struct fanotify_event_info_header { u8 info_type; u8 pad; u16 len; }
        let (Some(&kind), Some(len)) = (info.first(), u16_at(info, 2)) else {
            return bad(format!("info header cut at {} bytes", info.len()));
        };
        let len = usize::from(len);
        if len < 4 || len > info.len() {
            return bad(format!("info record of {len} bytes in {}", info.len()));
        }
        let rec = &info[..len];
        if kind == libc::FAN_EVENT_INFO_TYPE_FID {
            // Then __kernel_fsid_t (8 bytes) and struct file_handle
            // { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }.
            let (Some(fsid), Some(bytes), Some(ty)) =
                (rec.get(4..12), u32_at(rec, 12), u32_at(rec, 16))
            else {
                return bad(format!("FID record of {len} bytes"));
            };
            let Some(handle) = rec.get(20..20 + bytes as usize) else {
                return bad(format!(
                    "file handle of {bytes} bytes in a {len}-byte record"
                ));
            };
            let mut f = [0u8; 8];
            f.copy_from_slice(fsid);
            fid = Some(Fid {
                fsid: f,
                handle_type: ty as i32,
                handle: handle.to_vec(),
            });
        }
        info = &info[len..];
    }
    Ok(fid)
}

/// Parse the event records of one `read` of the group. Records before a
/// malformed one are returned with the error.
pub fn parse_records(mut bytes: &[u8]) -> (Vec<Record>, Option<ParseError>) {
    // struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved;
    // u16 metadata_len; u64 mask; i32 fd; i32 pid; }
    const META: usize = size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let fields = (
            u32_at(bytes, 0),
            bytes.get(4).copied(),
            u16_at(bytes, 6),
            u64_at(bytes, 8),
            u32_at(bytes, 20),
        );
        let (Some(len), Some(vers), Some(meta_len), Some(mask), Some(pid)) = fields else {
            let e = format!("event record cut at {} bytes", bytes.len());
            return (out, Some(ParseError::Malformed(e)));
        };
        if vers != libc::FANOTIFY_METADATA_VERSION {
            return (out, Some(ParseError::Version(vers)));
        }
        let (len, meta_len) = (len as usize, usize::from(meta_len));
        if len > bytes.len() || meta_len < META || meta_len > len {
            let e = format!(
                "event of {len} bytes with {meta_len} of metadata in a read of {}",
                bytes.len()
            );
            return (out, Some(ParseError::Malformed(e)));
        }
        match parse_info(&bytes[meta_len..len]) {
            Ok(fid) => out.push(Record {
                mask,
                pid: pid as i32,
                fid,
            }),
            Err(e) => return (out, Some(e)),
        }
        bytes = &bytes[len..];
    }
    (out, None)
}

/// The file handle of the inode `fd` refers to, encoded as fanotify
/// encodes the handles it reports.
pub(super) fn handle_of(fd: &File) -> io::Result<(i32, Vec<u8>)> {
    #[repr(C)]
    struct Buf {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; MAX_HANDLE],
    }
    let mut last = None;
    // AT_HANDLE_FID first (what fanotify uses since 6.5: it also works on
    // filesystems that cannot decode handles); older kernels reject the
    // flag, and there fanotify encodes plain handles.
    for flags in [libc::AT_EMPTY_PATH | AT_HANDLE_FID, libc::AT_EMPTY_PATH] {
        let mut buf = Buf {
            handle_bytes: MAX_HANDLE as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE],
        };
        let mut mount_id: c_int = 0;
        // SAFETY: a valid descriptor, an empty C string, and a buffer with
        // room for MAX_HANDLE bytes after the header, as handle_bytes says.
        let r = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&raw mut buf).cast::<libc::file_handle>(),
                &mut mount_id,
                flags,
            )
        };
        if r == 0 {
            let n = (buf.handle_bytes as usize).min(MAX_HANDLE);
            return Ok((buf.handle_type, buf.f_handle[..n].to_vec()));
        }
        let e = os_err();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        last = Some(e);
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// The filesystem id fanotify puts in its FID records for `fd`'s inode.
pub(super) fn fsid_of(fd: &File) -> io::Result<[u8; 8]> {
    // SAFETY: all-zero is a valid statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os_err());
    }
    // SAFETY: fsid_t is two c_ints (8 bytes) with private fields; read as
    // the bytes the kernel also copies into the event.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: u32, mask: u64, pid: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.push(libc::FANOTIFY_METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&24u16.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&(-1i32).to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        b
    }

    fn fid_event(mask: u64, pid: i32, fsid: [u8; 8], ty: i32, handle: &[u8]) -> Vec<u8> {
        // The kernel pads info records to 4 bytes.
        let rec_len = (20 + handle.len()).div_ceil(4) * 4;
        let mut b = meta((24 + rec_len) as u32, mask, pid);
        b.push(libc::FAN_EVENT_INFO_TYPE_FID);
        b.push(0);
        b.extend_from_slice(&(rec_len as u16).to_ne_bytes());
        b.extend_from_slice(&fsid);
        b.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(handle);
        b.resize(24 + rec_len, 0);
        b
    }

    #[test]
    fn parses_fid_records() {
        let mut bytes = fid_event(
            libc::FAN_MODIFY,
            42,
            [1; 8],
            1,
            &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        );
        bytes.extend(meta(24, libc::FAN_Q_OVERFLOW, 0));
        bytes.extend(fid_event(
            libc::FAN_ATTRIB | libc::FAN_MODIFY,
            7,
            [2; 8],
            -3,
            &[1; 8],
        ));
        let (records, err) = parse_records(&bytes);
        assert_eq!(err, None);
        assert_eq!(
            records,
            vec![
                Record {
                    mask: libc::FAN_MODIFY,
                    pid: 42,
                    fid: Some(Fid {
                        fsid: [1; 8],
                        handle_type: 1,
                        handle: vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                    }),
                },
                Record {
                    mask: libc::FAN_Q_OVERFLOW,
                    pid: 0,
                    fid: None,
                },
                Record {
                    mask: libc::FAN_ATTRIB | libc::FAN_MODIFY,
                    pid: 7,
                    fid: Some(Fid {
                        fsid: [2; 8],
                        handle_type: -3,
                        handle: vec![1; 8],
                    }),
                },
            ]
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        let good = fid_event(libc::FAN_MODIFY, 1, [0; 8], 1, &[1; 8]);
        // A handle longer than its record.
        let mut bad = good.clone();
        bad[24 + 12..24 + 16].copy_from_slice(&64u32.to_ne_bytes());
        let mut bytes = good.clone();
        bytes.extend(&bad);
        let (records, err) = parse_records(&bytes);
        assert_eq!(records.len(), 1);
        assert!(matches!(err, Some(ParseError::Malformed(w)) if w.contains("64")));
        // An event longer than the read.
        let (records, err) = parse_records(&good[..good.len() - 1]);
        assert!(records.is_empty());
        assert!(matches!(err, Some(ParseError::Malformed(_))));
        // An info header claiming less than itself.
        let mut bad = good.clone();
        bad[24 + 2..24 + 4].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(
            parse_records(&bad).1,
            Some(ParseError::Malformed(_))
        ));
        // Another metadata version.
        let mut bad = good;
        bad[4] = libc::FANOTIFY_METADATA_VERSION + 1;
        assert_eq!(
            parse_records(&bad).1,
            Some(ParseError::Version(libc::FANOTIFY_METADATA_VERSION + 1))
        );
    }
}
