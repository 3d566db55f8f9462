//! Compiles `proto/lbfleet.proto` with protox (pure Rust, no `protoc` needed) and
//! generates the tonic client and server code from the resulting descriptors.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/lbfleet.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
