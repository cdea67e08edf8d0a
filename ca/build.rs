//! Generates the `istio.v1.auth.IstioCertificateService` client and server
//! from `proto/ca.proto` (protox compiles it: no `protoc` needed).

fn main() {
    println!("cargo:rerun-if-changed=proto/ca.proto");
    let fds = match protox::compile(["proto/ca.proto"], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto/ca.proto: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
    {
        panic!("generating the CA service: {e}");
    }
}
