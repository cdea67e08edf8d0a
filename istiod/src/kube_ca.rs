//! The CA's Kubernetes side: the self-signed root kept in the
//! `istio-ca-secret` Secret (so every replica and every restart signs with
//! the same root), callers' service-account tokens checked by the API
//! server (`authentication.k8s.io/v1` TokenReview, audience `istio-ca`), and
//! the root distributed to every namespace as the `istio-ca-root-cert`
//! ConfigMap (key `root-cert.pem`), written by the leader only, as istiod's
//! namespace controller does; the leader also keeps the `caBundle` of the
//! webhook configurations it serves current ([`keep_webhook_ca_bundles`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use ca::SpiffeId;
use ca::service::{AUDIENCE, Authenticator, bearer, no_credentials, service_account_identity};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use translator::model::Snapshot;

/// The ConfigMap every namespace gets, and its key (Istio's names).
pub const ROOT_CERT_CONFIGMAP: (&str, &str) = ("istio-ca-root-cert", "root-cert.pem");

/// Checks bearer tokens with the API server's TokenReview: the token must be
/// authenticated for audience [`AUDIENCE`], as a service account.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    /// The API client (needs `create` on `tokenreviews`).
    pub client: kube::Client,
    /// The trust domain of the identities.
    pub trust_domain: String,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        _peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<SpiffeId, tonic::Status> {
        let token = bearer(metadata).ok_or_else(no_credentials)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(tonic::Status::unauthenticated(format!(
                "token refused by the API server: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            )));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == AUDIENCE))
        {
            return Err(tonic::Status::unauthenticated(format!(
                "token refused: audience is not {AUDIENCE:?}"
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_identity(&username, &self.trust_domain).ok_or_else(|| {
            tonic::Status::unauthenticated(format!(
                "token refused: {username:?} is not a service account"
            ))
        })
    }
}

/// While this replica leads, keeps `istio-ca-root-cert` (with `root_pem`)
/// in every namespace of the latest snapshot, by server-side apply (field
/// manager `istiod-rs`), rechecking whenever the namespaces or leadership
/// change. Errors are logged and retried at the next change.
pub async fn distribute_root(
    client: kube::Client,
    root_pem: Arc<str>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
    token: CancellationToken,
) {
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        if *leader.borrow_and_update() {
            let namespaces: Vec<String> = snapshots.borrow_and_update().namespaces.clone();
            let missing: Vec<&String> = namespaces.iter().filter(|n| !done.contains(*n)).collect();
            for ns in missing {
                match apply_root(&client, ns, &root_pem).await {
                    Ok(()) => {
                        done.insert(ns.clone());
                    }
                    Err(e) => warn!(namespace = %ns, error = %e, "istio-ca-root-cert not written"),
                }
            }
            done.retain(|n| namespaces.contains(n));
        } else {
            // A new leader rechecks everything.
            done.clear();
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { break },
            r = leader.changed() => if r.is_err() { break },
            _ = token.cancelled() => break,
        }
    }
}

async fn apply_root(client: &kube::Client, namespace: &str, root_pem: &str) -> kube::Result<()> {
    let (name, key) = ROOT_CERT_CONFIGMAP;
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("istio.io/config".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), root_pem.to_owned())].into()),
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let value = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": cm.metadata, "data": cm.data,
    });
    api.patch(
        name,
        &PatchParams::apply("istiod-rs").force(),
        &Patch::Apply(value),
    )
    .await?;
    info!(%namespace, "istio-ca-root-cert written");
    Ok(())
}

/// The Secret holding the self-signed root (Istio's name), in the daemon's namespace.
pub const CA_SECRET: &str = "istio-ca-secret";

/// The CA from `istio-ca-secret` in `namespace` (keys `ca-cert.pem`,
/// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), or a new self-signed
/// one stored there. Of two replicas creating it at once, the second gets
/// `409 AlreadyExists` and reads the first's.
///
/// # Errors
/// The API cannot be reached, or the Secret holds an unusable CA.
pub async fn load_or_create_secret(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> anyhow::Result<ca::Authority> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let from = |secret: Secret| -> anyhow::Result<ca::Authority> {
        let data = secret.data.unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        Ok(ca::Authority::from_pem(
            &get("ca-cert.pem"),
            &get("ca-key.pem"),
            &get("cert-chain.pem"),
            &get("root-cert.pem"),
        )?)
    };
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        info!(namespace, secret = CA_SECRET, "CA root read");
        return from(secret);
    }
    let authority = ca::Authority::self_signed(trust_domain)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(
            authority
                .to_pem()
                .into_iter()
                .map(|(k, v, _)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(namespace, secret = CA_SECRET, "self-signed CA root created");
            Ok(authority)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(CA_SECRET).await?;
            from(secret)
        }
        Err(e) => Err(e.into()),
    }
}

/// The webhook configurations whose `caBundle` the leader keeps: (kind,
/// plural, name), Istio's names for the default revision.
pub const WEBHOOK_CONFIGURATIONS: [(&str, &str, &str); 2] = [
    (
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        "istio-sidecar-injector",
    ),
    (
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        "istio-validator-istio-system",
    ),
];
/// How often the leader re-checks the webhook configurations, seconds.
const WEBHOOK_RECHECK_SECS: u64 = 30;

/// While leader, keeps `webhooks[].clientConfig.caBundle` of
/// [`WEBHOOK_CONFIGURATIONS`] equal to the mesh root (base64 PEM), whether
/// they point at the Service or at a URL, as istiod's webhook controller
/// does: a JSON Patch guarded by the object's `resourceVersion`, re-checked
/// every 30 s and on leadership changes. A configuration that does not
/// exist is left alone (it is not installed).
pub async fn keep_webhook_ca_bundles(
    client: kube::Client,
    root_pem: Arc<str>,
    mut leader: watch::Receiver<bool>,
    token: CancellationToken,
) {
    let bundle = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        root_pem.as_bytes(),
    );
    loop {
        if *leader.borrow_and_update() {
            for (kind, plural, name) in WEBHOOK_CONFIGURATIONS {
                if let Err(e) = patch_ca_bundle(&client, kind, plural, name, &bundle).await {
                    warn!(kind, name, error = %e, "webhook caBundle not updated");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(WEBHOOK_RECHECK_SECS)) => {}
            r = leader.changed() => if r.is_err() { break },
            _ = token.cancelled() => break,
        }
    }
}

async fn patch_ca_bundle(
    client: &kube::Client,
    kind: &str,
    plural: &str,
    name: &str,
    bundle: &str,
) -> kube::Result<()> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    );
    let Some(object) = api.get_opt(name).await? else {
        return Ok(());
    };
    let webhooks = object
        .data
        .get("webhooks")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ops = Vec::new();
    for (i, hook) in webhooks.iter().enumerate() {
        if hook
            .pointer("/clientConfig/caBundle")
            .and_then(serde_json::Value::as_str)
            == Some(bundle)
        {
            continue;
        }
        ops.push(serde_json::json!({
            "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle,
        }));
    }
    if ops.is_empty() {
        return Ok(());
    }
    let mut all = vec![serde_json::json!({
        "op": "test", "path": "/metadata/resourceVersion",
        "value": object.metadata.resource_version.clone().unwrap_or_default(),
    })];
    all.extend(ops);
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(all)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    info!(
        kind,
        name,
        webhooks = webhooks.len(),
        "webhook caBundle set to the mesh root"
    );
    Ok(())
}
