//! A module's static rules: read from where it points in its memory,
//! decoded and checked. The module is untrusted, so its rules are too
//! until they pass [`decode_static_rules`]: bounded in size, postcard with
//! nothing after it, absolute paths, sane egress entries. The policy set
//! merges what passes into the rules the kernel enforces.

use guardian_policy_abi::OwnedStaticRules;

use super::module::ModuleError;

/// Largest static-rules encoding accepted, bytes.
pub const RULES_MAX_BYTES: u32 = 64 * 1024;

pub(super) fn read_rules(packed: i64, memory: &[u8]) -> Result<OwnedStaticRules, ModuleError> {
    if packed < 0 {
        return Err(ModuleError::Rules(format!(
            "guardian_static_rules returned {packed} (the module could not encode them)"
        )));
    }
    let ptr = (packed as u64 >> 32) as usize;
    let len = (packed as u64 & 0xffff_ffff) as u32;
    if len > RULES_MAX_BYTES {
        return Err(ModuleError::Rules(format!(
            "{len} bytes, over the limit of {RULES_MAX_BYTES}"
        )));
    }
    let bytes = ptr
        .checked_add(len as usize)
        .and_then(|end| memory.get(ptr..end))
        .ok_or_else(|| ModuleError::Rules(format!("{len} bytes at {ptr} are outside memory")))?;
    decode_static_rules(bytes)
}

/// Decode and check a module's static rules from the bytes it pointed at
/// (postcard `StaticRules`, nothing after them, absolute paths, sane
/// egress entries). The module is untrusted until its rules pass this;
/// public so the fuzz targets and property tests reach the real decoder.
pub fn decode_static_rules(bytes: &[u8]) -> Result<OwnedStaticRules, ModuleError> {
    let (rules, rest): (OwnedStaticRules, _) = postcard::take_from_bytes(bytes)
        .map_err(|e| ModuleError::Rules(format!("not a postcard StaticRules: {e}")))?;
    if !rest.is_empty() {
        return Err(ModuleError::Rules(format!(
            "{} bytes after the encoded rules",
            rest.len()
        )));
    }
    for p in rules
        .protected
        .iter()
        .chain(rules.writers.iter().flatten())
        .chain(rules.service_exec.iter().flatten())
        .chain(rules.library_dirs.iter().flatten())
    {
        if !p.starts_with('/') {
            return Err(ModuleError::Rules(format!("path {p:?} is not absolute")));
        }
    }
    for e in rules.egress.iter().flatten() {
        let max = match e.net {
            guardian_policy_abi::IpAddr::V4(_) => 32,
            guardian_policy_abi::IpAddr::V6(_) => 128,
        };
        if e.prefix > max || e.ports.0 > e.ports.1 {
            return Err(ModuleError::Rules(format!(
                "egress entry {e:?}: prefix over {max} or ports reversed"
            )));
        }
    }
    Ok(rules)
}
