//! Self-signed certificates and kubeconfig files.

use base64::Engine as _;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A generated CA and the server configuration using a leaf certificate it signed.
pub struct TlsMaterial {
    /// The CA certificate (PEM), for the kubeconfig's `certificate-authority-data`.
    pub ca_pem: String,
    /// The rustls server configuration (HTTP/1.1 only).
    pub server_config: Arc<rustls::ServerConfig>,
}

/// A new self-signed CA named `name`: its certificate and the issuer that signs with it.
pub(crate) fn new_ca(name: &str) -> anyhow::Result<(Certificate, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert, Issuer::new(params, key)))
}

/// A leaf certificate signed by `issuer`: subject alternative `names`, the distinguished name
/// parts `subject`, and the extended key usages `usages`; with its new key.
pub(crate) fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    subject: &[(DnType, &str)],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> anyhow::Result<(Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    for (part, value) in subject {
        params.distinguished_name.push(part.clone(), *value);
    }
    params.extended_key_usages = usages;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Generate a CA and a server certificate for `127.0.0.1` and `localhost`.
pub fn generate() -> anyhow::Result<TlsMaterial> {
    let (ca_cert, issuer) = new_ca("mcs-testapi CA")?;
    let (leaf_cert, leaf_key) = new_leaf(
        &issuer,
        &["127.0.0.1", "localhost"],
        &[(DnType::CommonName, "mcs-testapi")],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(cfg),
    })
}

/// A kubeconfig for `url` with a bearer `token` and, for HTTPS, the CA.
pub fn kubeconfig(url: &str, token: &str, ca_pem: Option<&str>) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mcs-testapi\n  cluster:\n    server: {url}\n{ca}\
         contexts:\n- name: mcs-testapi\n  context:\n    cluster: mcs-testapi\n    user: mcs-testapi\n    namespace: default\n\
         current-context: mcs-testapi\nusers:\n- name: mcs-testapi\n  user:\n    token: {token}\n"
    )
}
