//! `docs/ISTIO-API-SUPPORT.md` names every field `crds::support` reports as
//! not supported yet.

use std::path::Path;

#[test]
fn the_support_table_lists_every_unsupported_field() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ISTIO-API-SUPPORT.md"),
    )
    .expect("docs/ISTIO-API-SUPPORT.md");
    let missing: Vec<String> = crds::support::NOT_YET
        .iter()
        .filter(|(_, path)| !doc.contains(&format!("`{path}`")))
        .map(|(kind, path)| format!("{kind}: {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/ISTIO-API-SUPPORT.md: {missing:#?}"
    );
    for (kind, path, value, _) in crds::support::NOT_YET_VALUES {
        assert!(
            doc.contains(value),
            "{kind} {path} = {value} is not in the support table"
        );
    }
}
