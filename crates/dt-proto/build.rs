//! Compile the protos with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/devtrust.proto",
        "proto/devices.proto",
        "proto/nodes.proto",
        "proto/db.proto",
        "proto/access.proto",
        "proto/apps.proto",
        "proto/mdm.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
