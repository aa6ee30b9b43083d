//! Embeds the browser pages and assets of `web/` into the binary (`web_assets.rs`), so a node
//! serves them with no files beside it and no internet.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let web_dir = manifest_dir.join("web");
    println!("cargo:rerun-if-changed={}", web_dir.display());
    let mut entries = Vec::new();
    if web_dir.is_dir() {
        for entry in std::fs::read_dir(&web_dir)? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            println!("cargo:rerun-if-changed={}", path.display());
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or("a web asset's name is not UTF-8")?
                .to_owned();
            let content_type = match path.extension().and_then(|ext| ext.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            entries.push((name, content_type, path));
        }
    }
    entries.sort();
    let mut code = String::from("/// (file name, content type, bytes) of every file in `web/`.\npub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for (name, content_type, path) in entries {
        code.push_str(&format!(
            "    ({name:?}, {content_type:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("web_assets.rs"), code)?;
    Ok(())
}
