//! The webhook's and extender's serving certificate: generated at start (a CA of the
//! operator's own and a certificate for the Service's names), the CA written into the webhook
//! configurations' `caBundle` so that the API server trusts it.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A serving certificate and the CA that signed it, as PEM.
#[derive(Clone, Debug)]
pub struct Serving {
    /// The CA's certificate (what clients trust).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

/// Generates a CA and a certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> anyhow::Result<Serving> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "tensor-fusion-operator-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for n in names {
        params.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.as_str().try_into()?),
        });
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "tensor-fusion-operator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;
    Ok(Serving {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A rustls server configuration for the certificate (ring; TLS 1.2 and 1.3; HTTP/1.1).
pub fn server_config(s: &Serving) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut s.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut s.key_pem.as_bytes())?
        .context("no private key in the PEM")?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Writes the CA into every webhook of the named configurations (those that exist).
pub async fn patch_ca_bundle(
    client: &kube::Client,
    mutating: &str,
    validating: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(cfg) = m.get_opt(mutating).await? {
        let hooks: Vec<serde_json::Value> = cfg
            .webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| serde_json::json!({"name": w.name, "admissionReviewVersions": w.admission_review_versions,
                 "sideEffects": w.side_effects, "clientConfig": {"caBundle": bundle}}))
            .collect();
        let patch = serde_json::json!({"webhooks": hooks});
        m.patch(mutating, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
    }
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(cfg) = v.get_opt(validating).await? {
        let hooks: Vec<serde_json::Value> = cfg
            .webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| serde_json::json!({"name": w.name, "admissionReviewVersions": w.admission_review_versions,
                 "sideEffects": w.side_effects, "clientConfig": {"caBundle": bundle}}))
            .collect();
        let patch = serde_json::json!({"webhooks": hooks});
        v.patch(
            validating,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    }
    Ok(())
}
