//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a fresh machine needs no system package; and
//! compiles `proto/fluss_wire.proto` (Fluss's requests as Fluss declares them) to a descriptor set for the strict-
//! decoder test (`FLUSS_WIRE_DESCRIPTOR`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/fluss_wire.proto");
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("fluss_wire.desc");
    let status = std::process::Command::new(&protoc)
        .arg("--proto_path=proto")
        .arg(format!("--descriptor_set_out={}", descriptor.display()))
        .arg("proto/fluss_wire.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/fluss_wire.proto: {status}").into());
    }
    println!("cargo:rustc-env=FLUSS_WIRE_DESCRIPTOR={}", descriptor.display());
    // SAFETY: build scripts are single-threaded; the variable is read by tonic-prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/fluss_api.proto");
    tonic_prost_build::configure()
        // Record payloads stay `Bytes` end to end: no copy between segment, message and decoder.
        .bytes(".fluss.ProduceLogRequest.records")
        .bytes(".fluss.PbFetchedBatch.records")
        .bytes(".fluss.PutKvRequest.records")
        .bytes(".fluss.FetchKvSnapshotResponse.records")
        .compile_protos(&["proto/fluss_api.proto"], &["proto"])?;
    Ok(())
}
