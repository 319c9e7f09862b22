//! The `MeshPolicy` custom resource (`sockmesh.io/v1alpha1`, namespaced), as the control plane
//! reads it. Its schema is deploy/k8s/crd-meshpolicy.yaml: `spec.service` names a Service of
//! the policy's namespace, and every other `spec` field is the field of the same name of a
//! service in the mesh config (docs/config.md), so the mapping decodes them with the model
//! itself ([`super::map`]).
//!
//! The spec is kept as raw JSON here, on purpose: kube-rs decodes a whole list at once, and
//! one policy the API server accepted but the model does not (an unknown `lb`, a typo an old
//! CRD let through) must be reported for that policy alone, with its field path, not make
//! the whole watch fail. No kube derive either: four strings and two accessors are all the
//! [`Resource`] trait needs, and kube-derive with schemars is the heaviest part of kube's
//! build.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::{Deserialize, Serialize};

/// The API group of the CRD.
pub const GROUP: &str = "sockmesh.io";
/// The (only) served version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "MeshPolicy";
/// The resource name in URLs (`/apis/sockmesh.io/v1alpha1/meshpolicies`).
pub const PLURAL: &str = "meshpolicies";

/// One `MeshPolicy` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshPolicy {
    pub metadata: ObjectMeta,
    /// `{service: NAME, lb: ..., outlier: {...}, ...}`, checked by the mapping, not here.
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl MeshPolicy {
    /// `namespace/name`, how logs and rejections name the policy.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or(""),
            self.metadata.name.as_deref().unwrap_or("")
        )
    }

    /// `spec.service`, when it is a string.
    pub fn service(&self) -> Option<&str> {
        self.spec.get("service").and_then(serde_json::Value::as_str)
    }
}

impl Resource for MeshPolicy {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_decoding() {
        assert_eq!(
            MeshPolicy::url_path(&(), None),
            "/apis/sockmesh.io/v1alpha1/meshpolicies"
        );
        assert_eq!(
            MeshPolicy::url_path(&(), Some("shop")),
            "/apis/sockmesh.io/v1alpha1/namespaces/shop/meshpolicies"
        );
        assert_eq!(MeshPolicy::api_version(&()), "sockmesh.io/v1alpha1");
        let p: MeshPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "sockmesh.io/v1alpha1", "kind": "MeshPolicy",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"service": "checkout", "lb": "fastest"}
        }))
        .unwrap();
        assert_eq!(p.key(), "shop/checkout");
        assert_eq!(p.service(), Some("checkout"));
        // A spec the model refuses still decodes: the mapping reports it, for this policy.
        let odd: MeshPolicy =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(odd.service(), None);
    }
}
