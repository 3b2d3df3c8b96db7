//! Leaves a placeholder page in `web/dist` when the web UI has not been built, so the
//! server compiles without Node.js and says at `/` how to build the UI. Once `make` has
//! built `web/dist`, the release build embeds it (and rebuilds when it changes: the embedded
//! files are tracked).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let dist = Path::new(&manifest).join("../../web/dist");
    if dist.exists() {
        return;
    }
    let page = "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Sluice</title>\n\
        <p>The web UI was not built: run <code>make</code> (or <code>npm ci &amp;&amp; npm run \
        build</code> in <code>web/</code>), then rebuild.</p>\n";
    let written =
        std::fs::create_dir_all(&dist).and_then(|()| std::fs::write(dist.join("index.html"), page));
    if let Err(error) = written {
        println!(
            "cargo:warning=web/dist is missing and could not be created ({error}): / will say the UI was not built"
        );
    }
}
