//! Just enough of a BTF reader to find struct field offsets in the running
//! kernel's type information (`/sys/kernel/btf/vmlinux`).
//!
//! Our eBPF programs are written in Rust, which cannot emit the CO-RE
//! relocations that let C programs adapt to each kernel's struct layout.
//! Instead the agent reads the offsets here and hands them to the programs
//! through the config map (`guardian_common::KernelOffsets`). The format is
//! the kernel's own (`include/uapi/linux/btf.h`): a header, a type section
//! of variable-length records, and a string section.

use std::{collections::HashMap, path::Path};

use guardian_common::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF or finding a field in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error(
        "cannot read kernel BTF {path}: {source} (kernel built without CONFIG_DEBUG_INFO_BTF?)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF we understand.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A struct the programs need is not described.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// A field the programs need is not in its struct.
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
    },
}

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the struct.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// `size` for sized kinds, `type` for modifiers and typedefs.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed type information.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
    funcs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Read the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Read BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parse raw BTF (little-endian, as on every architecture we run on).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if u16_at(b, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_start = hdr_len + type_off;
        let ty = b
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < ty.len() {
            let name = u32_at(ty, at)?;
            let info = u32_at(ty, at + 4)?;
            let size_or_type = u32_at(ty, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let raw = u32_at(ty, m + 8)?;
                        // With kind_flag set, the top 8 bits are a bitfield
                        // size and the low 24 the bit offset.
                        let bit_offset = if kind_flag { raw & 0x00ff_ffff } else { raw };
                        members.push(Member {
                            name: u32_at(ty, m)?,
                            type_id: u32_at(ty, m + 4)?,
                            bit_offset,
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM => 8 * vlen,
                KIND_FUNC_PROTO => {
                    // Parameters: name and type; the position goes where a
                    // member's offset would.
                    for i in 0..vlen {
                        let m = at + 8 * i;
                        members.push(Member {
                            name: u32_at(ty, m)?,
                            type_id: u32_at(ty, m + 4)?,
                            bit_offset: i as u32,
                        });
                    }
                    8 * vlen
                }
                KIND_VAR => 4,
                KIND_DATASEC => 12 * vlen,
                KIND_DECL_TAG => 4,
                KIND_ENUM64 => 12 * vlen,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs_by_name: HashMap::new(),
            funcs_by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        let mut funcs = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.string(t.name).to_owned();
                by_name.entry(name).or_insert(id as u32);
            } else if t.kind == KIND_FUNC {
                funcs
                    .entry(btf.string(t.name).to_owned())
                    .or_insert(id as u32);
            }
        }
        btf.structs_by_name = by_name;
        btf.funcs_by_name = funcs;
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `field` within `t`, looking through anonymous struct
    /// and union members (the kernel nests many fields that way, e.g. most
    /// of `struct mm_struct`).
    fn find_member(&self, t: &Type, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.string(m.name);
            if name == field {
                return Some(m.bit_offset);
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(m.type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(off) = self.find_member(inner, field, depth + 1)
            {
                return Some(m.bit_offset + off);
            }
        }
        None
    }

    /// Byte offset of `strukt.field`.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let t = &self.types[*id as usize];
        let bits = self
            .find_member(t, field, 0)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::Malformed("field is a bitfield"));
        }
        Ok(bits / 8)
    }

    /// Position (0-based) of the parameter `param` of the kernel function
    /// `func`.
    pub fn param_index(&self, func: &str, param: &str) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField {
            strukt: format!("{func}()"),
            field: param.to_owned(),
        };
        let id = self
            .funcs_by_name
            .get(func)
            .ok_or_else(|| BtfError::NoStruct(format!("function {func}")))?;
        let proto = self
            .types
            .get(self.types[*id as usize].size_or_type as usize)
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or(BtfError::Malformed("function without a prototype"))?;
        proto
            .members
            .iter()
            .find(|m| self.string(m.name) == param)
            .map(|m| m.bit_offset)
            .ok_or_else(no_field)
    }

    /// Every offset the eBPF programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            file_f_inode: self.field_offset("file", "f_inode")?,
            file_f_flags: self.field_offset("file", "f_flags")?,
            file_f_mode: self.field_offset("file", "f_mode")?,
            inode_i_ino: self.field_offset("inode", "i_ino")?,
            inode_i_sb: self.field_offset("inode", "i_sb")?,
            sb_s_dev: self.field_offset("super_block", "s_dev")?,
            task_mm: self.field_offset("task_struct", "mm")?,
            task_real_parent: self.field_offset("task_struct", "real_parent")?,
            task_tgid: self.field_offset("task_struct", "tgid")?,
            task_files: self.field_offset("task_struct", "files")?,
            mm_exe_file: self.field_offset("mm_struct", "exe_file")?,
            files_fdt: self.field_offset("files_struct", "fdt")?,
            fdt_max_fds: self.field_offset("fdtable", "max_fds")?,
            fdt_fd: self.field_offset("fdtable", "fd")?,
            dentry_d_inode: self.field_offset("dentry", "d_inode")?,
            dentry_d_name: self.field_offset("dentry", "d_name")?,
            qstr_name: self.field_offset("qstr", "name")?,
            bprm_file: self.field_offset("linux_binprm", "file")?,
            bprm_filename: self.field_offset("linux_binprm", "filename")?,
            iattr_ia_valid: self.field_offset("iattr", "ia_valid")?,
            // The BPF LSM stub has the hook's exact parameters; the
            // security_ wrapper the same ones. Unknown (u32::MAX) keeps the
            // setattr hook detached rather than reading the wrong argument.
            setattr_dentry_arg: self
                .param_index("bpf_lsm_inode_setattr", "dentry")
                .or_else(|_| self.param_index("security_inode_setattr", "dentry"))
                .unwrap_or(u32::MAX),
            mm_start_stack: self.field_offset("mm_struct", "start_stack")?,
            dentry_d_parent: self.field_offset("dentry", "d_parent")?,
            path_dentry: self.field_offset("path", "dentry")?,
            vfsmount_mnt_root: self.field_offset("vfsmount", "mnt_root")?,
            file_private_data: self.field_offset("file", "private_data")?,
            bpf_map_name: self.field_offset("bpf_map", "name")?,
            bpf_prog_aux: self.field_offset("bpf_prog", "aux")?,
            bpf_prog_aux_name: self.field_offset("bpf_prog_aux", "name")?,
            bpf_link_prog: self.field_offset("bpf_link", "prog")?,
            task_ptrace: self.field_offset("task_struct", "ptrace")?,
            file_f_path: self.field_offset("file", "f_path")?,
            inode_i_size: self.field_offset("inode", "i_size")?,
            task_fs: self.field_offset("task_struct", "fs")?,
            fs_root: self.field_offset("fs_struct", "root")?,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob: `struct outer { int a; union { long b; int
    /// c; }; }` where the union is anonymous.
    fn tiny() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0long\0".to_vec();
        let s = |name: &str| {
            let needle = format!("{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
        };
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(s("int"));
        push(KIND_INT << 24);
        push(4);
        push(32);
        // 2: long
        push(s("long"));
        push(KIND_INT << 24);
        push(8);
        push(64);
        // 3: anonymous union { long b; int c; }
        push(0);
        push((KIND_UNION << 24) | 2);
        push(8);
        push(s("b"));
        push(2);
        push(0);
        push(s("c"));
        push(1);
        push(0);
        // 4: struct outer { int a; <anon union> at 64 bits }
        push(s("outer"));
        push((KIND_STRUCT << 24) | 2);
        push(16);
        push(s("a"));
        push(1);
        push(0);
        push(0);
        push(3);
        push(64);
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&tiny()).unwrap();
        assert_eq!(btf.field_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.field_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "c").unwrap(), 8);
        assert!(matches!(
            btf.field_offset("outer", "zz"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut b = tiny();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn running_kernel_has_every_offset() {
        // No skip: without BTF the guard cannot run here at all, and the
        // host integration tests would fail too; say why at the source.
        assert!(
            Path::new(VMLINUX_BTF).exists(),
            "{VMLINUX_BTF} missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF), guardian cannot run on it"
        );
        let btf = Btf::from_sys_fs().unwrap();
        let off = btf.kernel_offsets().unwrap();
        // Every field here sits after at least one other field.
        assert!(off.file_f_inode > 0 && off.inode_i_sb > 0 && off.task_mm > 0);
        assert!(off.mm_exe_file > 0 && off.fdt_fd > 0);
        assert!(off.dentry_d_name > 0 && off.qstr_name == 8);
        // Linux >= 6.3 passes the idmap first.
        assert!(off.setattr_dentry_arg <= 1);
    }
}
