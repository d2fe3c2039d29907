//! Builds the eBPF object (`guardian-ebpf`) and puts it in `OUT_DIR` for
//! `include_bytes_aligned!`.
//!
//! Three ways, checked in this order:
//! 1. `GUARDIAN_EBPF_OBJECT=/path/to/guardian-ebpf`: use a prebuilt object
//!    (Yocto: the object is architecture-independent, built once by our own
//!    build, checksummed, and consumed here without a nightly toolchain).
//! 2. The pinned nightly (`EBPF_TOOLCHAIN` in `cross/versions.sh`, or
//!    `GUARDIAN_EBPF_TOOLCHAIN`) is installed: build with aya-build.
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
    strip_debug(&dst);
    Ok(())
}

/// Drop the object's DWARF (about 1.8 MB of the agent's binary; the kernel
/// never reads it): `rust-objcopy --strip-debug`, the llvm-objcopy every
/// rustup toolchain carries. `.BTF` and `.BTF.ext`, which the loader and
/// the verifier use, are not debug sections and stay. Best effort: without
/// the tool the object is embedded as built, and the build says so.
fn strip_debug(obj: &Path) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let host = env::var("HOST").unwrap_or_default();
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(sysroot) = sysroot else {
        println!(
            "cargo:warning=cannot find the toolchain's sysroot: the eBPF object keeps its debug info"
        );
        return;
    };
    let tool = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(&host)
        .join("bin/rust-objcopy");
    let stripped = obj.with_extension("stripped");
    let ok = Command::new(&tool)
        .arg("--strip-debug")
        .arg(obj)
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    if !ok || fs::rename(&stripped, obj).is_err() {
        println!(
            "cargo:warning={} did not strip the eBPF object: it keeps its debug info",
            tool.display()
        );
    }
}

fn toolchain_installed(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
