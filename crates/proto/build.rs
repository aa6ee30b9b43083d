//! Compiles `proto/**/*.proto` with a vendored `protoc`, so a fresh machine needs no system protobuf.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let protos = [
        proto_root.join("carebell/device/v1/device.proto"),
        proto_root.join("carebell/console/v1/console.proto"),
        proto_root.join("carebell/family/v1/family.proto"),
        proto_root.join("carebell/provider/v1/provider.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The console, family and provider APIs are also spoken as JSON by the browser pages
    // (`carebell_gateway::web`): their messages derive serde, with proto field names, missing
    // fields defaulted, oneofs as `{"variant": {...}}`.
    for package in [
        ".carebell.console",
        ".carebell.family",
        ".carebell.provider",
    ] {
        config.message_attribute(
            package,
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
        config.enum_attribute(
            package,
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"snake_case\")]",
        );
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("carebell_descriptor.bin"))
        .compile_with_config(config, &protos, &[proto_root])?;
    Ok(())
}
