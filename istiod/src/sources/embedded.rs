//! The embedded default: the example Bookinfo mesh under
//! `examples/bookinfo/`, compiled into the binary, served when no
//! `--config-dir` is given.

use std::path::PathBuf;

use super::Loaded;

const FILES: [(&str, &str); 2] = [
    (
        "examples/bookinfo/platform.yaml",
        include_str!("../../../examples/bookinfo/platform.yaml"),
    ),
    (
        "examples/bookinfo/networking.yaml",
        include_str!("../../../examples/bookinfo/networking.yaml"),
    ),
];

/// The example mesh, parsed.
pub fn load() -> Loaded {
    let mut loaded = Loaded::default();
    for (name, text) in FILES {
        loaded.add_text(PathBuf::from(name), text);
    }
    loaded
}
