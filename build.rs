//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
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
