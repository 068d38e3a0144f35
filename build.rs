//! Builds the XDP fast path's BPF object (feature `xdp`): compiles
//! `xdp/turnd_xdp.c` with clang's BPF target into `$OUT_DIR/turnd_xdp.o`,
//! which `src/server/xdp.rs` embeds. Without the feature it does nothing.
//!
//! Needs clang with the BPF target and libbpf's headers (Debian:
//! `apt-get install clang-14 libbpf-dev`); `CLANG` picks the compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=xdp/turnd_xdp.c");
    println!("cargo:rerun-if-changed=xdp/turnd_xdp.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("turnd_xdp.o");
    let clang = std::env::var("CLANG").ok().or_else(|| {
        [
            "clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14",
        ]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
    });
    let Some(clang) = clang else {
        panic!(
            "feature `xdp` needs clang with the BPF target to build xdp/turnd_xdp.c \
             (Debian: apt-get install clang-14 libbpf-dev), or set CLANG"
        );
    };
    // asm/types.h lives under the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
            "-target",
            "bpf",
            "-D__BPF__",
        ])
        .arg("-I")
        .arg(format!("/usr/include/{multiarch}"))
        .args(["-c", "xdp/turnd_xdp.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        status.success(),
        "{clang} failed to build xdp/turnd_xdp.c (is libbpf-dev installed?)"
    );
}
