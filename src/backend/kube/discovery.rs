//! Discovery: which resource (plural, scope) serves an `apiVersion`/`kind`.
//!
//! Lazy and cached per backend: one GET of `/api/v1` or `/apis/<group>/<version>`
//! per group-version an object uses, and one GET of `/apis` when a kind is
//! known only by group (objects to prune, recorded in the inventory). After
//! CustomResourceDefinitions are applied the cache is dropped, so kinds they
//! define are found (see [`Discovery::invalidate`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};
use kube::core::ApiResource;

use super::rest::{Rest, status_code};

/// An API resource with its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// `Kind` for the core group, `Kind.group` otherwise — kubectl's spelling,
/// and what plans call a Kubernetes resource kind.
pub fn group_kind(api_version: &str, kind: &str) -> String {
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind.to_owned(),
    }
}

/// Splits a [`group_kind`] into (group, kind).
pub fn split_group_kind(gk: &str) -> (&str, &str) {
    match gk.split_once('.') {
        Some((kind, group)) => (group, kind),
        None => ("", gk),
    }
}

type Resources = Option<Arc<APIResourceList>>;

/// The discovery cache of one backend.
#[derive(Debug, Default)]
pub struct Discovery {
    /// apiVersion → its resources (`None`: not served).
    versions: Mutex<HashMap<String, Resources>>,
    /// group → preferred group-version, from `/apis`.
    groups: Mutex<Option<Arc<HashMap<String, String>>>>,
}

impl Discovery {
    /// Forgets everything (after CRDs changed what the server serves).
    pub fn invalidate(&self) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The resource serving `kind` in `api_version`; `None` when the server
    /// does not serve it (yet).
    pub async fn resolve(
        &self,
        rest: &Rest,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<Resolved>, kube::Error> {
        let Some(list) = self.resources(rest, api_version).await? else {
            return Ok(None);
        };
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        Ok(list
            .resources
            .iter()
            .find(|r| r.kind == kind && !r.name.contains('/'))
            .map(|r| Resolved {
                resource: ApiResource {
                    group: group.to_owned(),
                    version: version.to_owned(),
                    api_version: api_version.to_owned(),
                    kind: kind.to_owned(),
                    plural: r.name.clone(),
                },
                namespaced: r.namespaced,
            }))
    }

    /// The resource serving a [`group_kind`] at the group's preferred version.
    pub async fn resolve_group_kind(
        &self,
        rest: &Rest,
        gk: &str,
    ) -> Result<Option<Resolved>, kube::Error> {
        let (group, kind) = split_group_kind(gk);
        let api_version = if group.is_empty() {
            "v1".to_owned()
        } else {
            match self.preferred(rest, group).await? {
                Some(v) => v,
                None => return Ok(None),
            }
        };
        self.resolve(rest, &api_version, kind).await
    }

    async fn preferred(&self, rest: &Rest, group: &str) -> Result<Option<String>, kube::Error> {
        let cached = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let groups = match cached {
            Some(g) => g,
            None => {
                let list: APIGroupList = rest.call(|| rest.client.list_api_groups()).await?;
                let map: HashMap<String, String> = list
                    .groups
                    .into_iter()
                    .filter_map(|g| {
                        let v = g
                            .preferred_version
                            .or_else(|| g.versions.into_iter().next())?;
                        Some((g.name, v.group_version))
                    })
                    .collect();
                let map = Arc::new(map);
                *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = Some(map.clone());
                map
            }
        };
        Ok(groups.get(group).cloned())
    }

    async fn resources(&self, rest: &Rest, api_version: &str) -> Result<Resources, kube::Error> {
        if let Some(hit) = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(api_version)
        {
            return Ok(hit.clone());
        }
        let fetched = if api_version.contains('/') {
            rest.call(|| rest.client.list_api_group_resources(api_version))
                .await
        } else {
            rest.call(|| rest.client.list_core_api_resources(api_version))
                .await
        };
        let value = match fetched {
            Ok(list) => Some(Arc::new(list)),
            Err(e) if status_code(&e) == Some(404) => None,
            Err(e) => return Err(e),
        };
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(api_version.to_owned(), value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_kinds_spell_like_kubectl() {
        assert_eq!(group_kind("v1", "Service"), "Service");
        assert_eq!(group_kind("apps/v1", "Deployment"), "Deployment.apps");
        assert_eq!(
            group_kind("networking.k8s.io/v1", "Ingress"),
            "Ingress.networking.k8s.io"
        );
        assert_eq!(
            split_group_kind("Ingress.networking.k8s.io"),
            ("networking.k8s.io", "Ingress")
        );
        assert_eq!(split_group_kind("Service"), ("", "Service"));
    }
}
