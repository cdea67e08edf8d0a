//! Config sources. Each turns the outside world into [`crds::Object`]s for
//! the one model; today the folder source ([`file`]), the embedded example
//! mesh ([`embedded`]) and, later, Kubernetes watchers.

pub mod embedded;
pub mod file;

use std::path::PathBuf;

use crds::Object;
use crds::document::{ParseError, parse_value, split_documents};

/// A document that was reported and skipped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: document {document}: {error}", file.display())]
pub struct SourceError {
    /// The file it came from.
    pub file: PathBuf,
    /// 0-based index of the document in the file.
    pub document: usize,
    /// What is wrong, naming kind, object and field.
    #[source]
    pub error: ParseError,
}

/// What a source read: the objects that parsed, and the documents that did
/// not (unsupported kinds are left out of both: they are not errors).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Objects, namespaces defaulted to `default`.
    pub objects: Vec<Object>,
    /// Broken documents, each skipped.
    pub errors: Vec<SourceError>,
}

impl Loaded {
    /// Parses one file's text (multi-document YAML or JSON) into `self`.
    pub fn add_text(&mut self, file: PathBuf, text: &str) {
        for (document, value) in split_documents(text) {
            let results = match value {
                Ok(v) => parse_value(v, "default"),
                Err(e) => vec![Err(e)],
            };
            for result in results {
                match result.and_then(|o| crds::validate::validate(&o).map(|()| o)) {
                    Ok(o) => self.objects.push(o),
                    Err(e) if e.is_unsupported_kind() => {}
                    Err(error) => self.errors.push(SourceError {
                        file: file.clone(),
                        document,
                        error,
                    }),
                }
            }
        }
    }
}
