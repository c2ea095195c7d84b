//! Compiles `tidelog/v1/*.proto` (the public contract), `wire/tidelog/v1/wire.proto` (the
//! byte-level view of RecordService) and `internal/tidelog/internal/v1/raft.proto` (broker to
//! broker Raft traffic) with protox, a pure-Rust protobuf compiler, so a fresh
//! machine needs no protoc. Both descriptor sets are written to OUT_DIR: the public one feeds
//! server reflection, both feed the wire-compatibility test.
use std::path::PathBuf;

use prost::Message;

const PUBLIC: &[&str] = &[
    "tidelog/v1/record.proto",
    "tidelog/v1/records_service.proto",
    "tidelog/v1/offsets_service.proto",
    "tidelog/v1/admin_service.proto",
    "tidelog/v1/group_service.proto",
    "tidelog/v1/security_service.proto",
    "tidelog/v1/transaction_service.proto",
];

/// Generates Rust for `fds` into `OUT_DIR/<dir>` (`bytes` fields as `Bytes`).
fn generate(fds: prost_types::FileDescriptorSet, out: &std::path::Path, dir: &str) -> std::io::Result<()> {
    let dir = out.join(dir);
    std::fs::create_dir_all(&dir)?;
    tonic_prost_build::configure()
        .out_dir(&dir)
        .bytes(".")
        .type_attribute(".", "#[allow(clippy::all, clippy::pedantic)]")
        .compile_fds(fds)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=tidelog");
    println!("cargo:rerun-if-changed=wire");
    println!("cargo:rerun-if-changed=internal");

    let public = protox::compile(PUBLIC, ["."])?;
    std::fs::write(out.join("tidelog_v1_descriptor.bin"), public.encode_to_vec())?;
    generate(public, &out, "public")?;

    let wire = protox::compile(["tidelog/v1/wire.proto"], ["wire"])?;
    std::fs::write(out.join("tidelog_v1_wire_descriptor.bin"), wire.encode_to_vec())?;
    generate(wire, &out, "wire")?;

    generate(protox::compile(["tidelog/internal/v1/raft.proto"], ["internal"])?, &out, "internal")?;
    Ok(())
}
