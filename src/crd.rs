//! The `crd` subcommand: the CRDs rendered as YAML, as committed in `crds/`.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::api::all_crds;

/// Errors of rendering or writing the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD could not be serialized.
    #[error("cannot render CRD {name} as YAML: {source}")]
    Render {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One CRD as a YAML document (without the leading `---`), written by [`crate::yaml`] so that
/// YAML 1.1 readers (kubectl, Helm, Argo CD) read the same strings as YAML 1.2 ones.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    crate::yaml::to_string_of(crd).map_err(|source| CrdError::Render {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// Every CRD as one multi-document YAML stream, in a stable order.
pub fn render_all() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&render(&crd)?);
    }
    Ok(out)
}

/// The file name a CRD is committed under in `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Writes one file per CRD into `dir` (created if missing).
pub fn write_dir(dir: &Path) -> Result<(), CrdError> {
    let write_error = |path: &Path, source| CrdError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    for crd in all_crds() {
        let path = dir.join(file_name(&crd));
        std::fs::write(&path, render(&crd)?).map_err(|e| write_error(&path, e))?;
    }
    Ok(())
}
