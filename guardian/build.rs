//! Builds the eBPF object (`guardian-ebpf`) and puts it in `OUT_DIR` for
//! `include_bytes_aligned!`.
//!
//! Three ways, checked in this order:
//! 1. `GUARDIAN_EBPF_OBJECT=/path/to/guardian-ebpf`: use a prebuilt object
//!    (Yocto: the object is architecture-independent, built once by our own
//!    build, checksummed, and consumed here without a nightly toolchain).
//! 2. The pinned nightly (`EBPF_TOOLCHAIN` in `cross/versions.sh`, or
//!    `GUARDIAN_EBPF_TOOLCHAIN`) is installed: build with aya-build, then
//!    slim the object (no DWARF; see [`slim`]) before it is embedded.
//! 3. Neither: write an empty object and warn. `cargo check`, clippy and
//!    docs work; the resulting binary refuses to run the guard and says why.
//!    `GUARDIAN_EBPF=skip` asks for this on purpose.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    for var in [
        "GUARDIAN_EBPF_OBJECT",
        "GUARDIAN_EBPF_TOOLCHAIN",
        "GUARDIAN_EBPF",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let dst = out.join("guardian-ebpf");
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let root = manifest.parent().unwrap_or(Path::new(".")).to_owned();

    if let Some(prebuilt) = env::var_os("GUARDIAN_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, &dst)
            .with_context(|| format!("copying prebuilt eBPF object {}", prebuilt.display()))?;
        // Embedded as given (its digest is what the builder checked); only
        // said when it is the unslimmed one, which costs the binary ~2 MB.
        if let Ok(names) = fs::read(&dst)
            .map_err(anyhow::Error::from)
            .and_then(|b| section_names(&b))
            && names.iter().any(|n| n.starts_with(".debug_"))
        {
            println!(
                "cargo:warning=the prebuilt eBPF object {} carries debug info: use the object this build script leaves in OUT_DIR (stripped), not the one under aya-build/",
                prebuilt.display()
            );
        }
        return Ok(());
    }

    let versions = root.join("cross/versions.sh");
    println!("cargo:rerun-if-changed={}", versions.display());
    let toolchain = match env::var("GUARDIAN_EBPF_TOOLCHAIN") {
        Ok(t) => Some(t),
        Err(_) => fs::read_to_string(&versions).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("EBPF_TOOLCHAIN="))
                .map(|v| v.trim().trim_matches('"').to_owned())
        }),
    };
    let skip = env::var("GUARDIAN_EBPF").is_ok_and(|v| v == "skip");
    let installed = toolchain.as_deref().is_some_and(toolchain_installed);
    if skip || !installed {
        let why = if skip {
            "GUARDIAN_EBPF=skip".to_owned()
        } else {
            match &toolchain {
                Some(t) => format!("toolchain {t} is not installed (run cross/setup.sh)"),
                None => "no EBPF_TOOLCHAIN in cross/versions.sh".to_owned(),
            }
        };
        println!(
            "cargo:warning=guardian is being built WITHOUT its eBPF object ({why}); the binary will refuse to run the guard"
        );
        fs::write(&dst, []).context("writing the empty eBPF object")?;
        return Ok(());
    }
    let toolchain = toolchain.unwrap_or_default();

    // guardian-ebpf's own source and the shared types it compiles in.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guardian-common/src").display()
    );
    let ebpf_dir = root.join("guardian-ebpf");
    let ebpf_dir_str = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "guardian-ebpf",
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF object")?;
    if !dst.exists() {
        return Err(anyhow!("aya-build produced no {}", dst.display()));
    }
    slim(&dst)
}

/// Sections the loader reads and a strip must leave in place: the
/// object's types (`.BTF`, which CO-RE and the verifier use) and its
/// function and line info (`.BTF.ext`).
const KEEP: [&str; 2] = [".BTF", ".BTF.ext"];

/// Slim the object before it is embedded: drop its DWARF (`--strip-debug`,
/// about 1.8 MB; the kernel never reads it) and `.rel.BTF.ext` (about
/// 160 KB of relocations that only a static linker joining objects uses;
/// aya, like libbpf, reads `.BTF.ext` as it stands). The result is checked
/// before it replaces the object: every section of [`KEEP`] the object had
/// is still there and no `.debug_*` section is. Best effort: without a
/// working objcopy the object is embedded as built, and the build says so
/// (the binary works; it is only larger).
fn slim(obj: &Path) -> anyhow::Result<()> {
    let original = fs::read(obj).context("reading the eBPF object")?;
    let had = section_names(&original).context("reading the eBPF object's sections")?;
    let stripped = obj.with_extension("stripped");
    let mut tried = Vec::new();
    for (tool, lib_dir) in objcopy_candidates() {
        let mut cmd = Command::new(&tool);
        // The toolchain's rust-objcopy links the toolchain's libLLVM, which
        // only rustup puts on the library path: name its directory, so the
        // tool also runs under a cargo that rustup did not start.
        if let Some(dir) = &lib_dir {
            let mut paths = vec![dir.clone()];
            paths.extend(env::split_paths(
                &env::var_os("LD_LIBRARY_PATH").unwrap_or_default(),
            ));
            cmd.env("LD_LIBRARY_PATH", env::join_paths(paths)?);
        }
        let ran = cmd
            .args(["--strip-debug", "--remove-section=.rel.BTF.ext"])
            .arg(obj)
            .arg(&stripped)
            .output();
        match ran {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                tried.push(format!(
                    "{}: {}",
                    tool.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
            Err(e) => {
                tried.push(format!("{}: {e}", tool.display()));
                continue;
            }
        }
        let slimmed = fs::read(&stripped).context("reading the stripped eBPF object")?;
        let has = section_names(&slimmed).context("reading the stripped object's sections")?;
        let lost: Vec<&str> = KEEP
            .into_iter()
            .filter(|k| had.iter().any(|h| h == k) && !has.iter().any(|h| h == k))
            .collect();
        if !lost.is_empty() || has.iter().any(|h| h.starts_with(".debug_")) {
            tried.push(format!(
                "{}: the result lost {lost:?} or kept debug sections",
                tool.display()
            ));
            continue;
        }
        fs::rename(&stripped, obj).context("replacing the eBPF object with its stripped copy")?;
        return Ok(());
    }
    let _ = fs::remove_file(&stripped);
    println!(
        "cargo:warning=the eBPF object is embedded with its debug info ({} bytes; about 5x its stripped size): no objcopy could strip it ({})",
        original.len(),
        if tried.is_empty() {
            "none found".to_owned()
        } else {
            tried.join("; ")
        }
    );
    Ok(())
}

/// objcopy tools that understand BPF objects, in order of preference, each
/// with the library directory it needs: the toolchain's own `rust-objcopy`
/// (every rustup toolchain carries it), then an `llvm-objcopy` on `PATH`.
fn objcopy_candidates() -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut tools = Vec::new();
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let host = env::var("HOST").unwrap_or_default();
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot {
        tools.push((
            sysroot
                .join("lib/rustlib")
                .join(&host)
                .join("bin/rust-objcopy"),
            Some(sysroot.join("lib")),
        ));
    }
    tools.push((PathBuf::from("llvm-objcopy"), None));
    tools
}

/// The section names of a 64-bit little-endian ELF object (what bpfel
/// objects are), read from its section header table.
fn section_names(elf: &[u8]) -> anyhow::Result<Vec<String>> {
    let u16_at = |o: usize| -> anyhow::Result<u16> {
        let b = elf
            .get(o..o + 2)
            .ok_or_else(|| anyhow!("truncated at {o}"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| -> anyhow::Result<u32> {
        let b = elf
            .get(o..o + 4)
            .ok_or_else(|| anyhow!("truncated at {o}"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| -> anyhow::Result<usize> {
        let b = elf
            .get(o..o + 8)
            .ok_or_else(|| anyhow!("truncated at {o}"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).context("offset too large")
    };
    // e_ident: "\x7fELF", ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(anyhow!("not a 64-bit little-endian ELF object"));
    }
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let start = strtab + u32_at(header(i))? as usize;
        let rest = elf
            .get(start..)
            .ok_or_else(|| anyhow!("section name {i} outside the object"))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(names)
}

fn toolchain_installed(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
