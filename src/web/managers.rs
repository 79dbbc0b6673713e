//! Several managers of one state type in one app, told apart by name, and the pure rule that
//! picks a route's manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::LeasedError;
use crate::LeaseManager;

/// Managers of one state type `S`, by name (each one's `name_prefix`), for an app that has more
/// than one — a thread manager for quick blocking calls and a process manager for crash-prone
/// jobs are both `LeaseManager<()>`, and actix keeps only the last `app_data` of a type, so
/// registering both directly would silently leave one. Put a `Managers` in `app_data` instead,
/// and name each route's (or scope's) manager with
/// [`LeaseConfig::manager`](super::LeaseConfig::manager).
///
/// *Available with the cargo feature `web`.*
///
/// ```
/// use std::time::Duration;
/// use actix_web::{web, App, HttpResponse};
/// use leasepool::web::{LeaseConfig, Leased, Managers};
/// use leasepool::{LeaseError, LeaseManager};
///
/// async fn quick(lease: Leased) -> Result<HttpResponse, LeaseError> {
///     Ok(HttpResponse::Ok().body(lease.run(|| "done").await?))
/// }
///
/// # fn app() -> Result<(), Box<dyn std::error::Error>> {
/// let threads = LeaseManager::builder().name_prefix("threads").build()?;
/// let sandbox = LeaseManager::builder().name_prefix("sandbox").build()?; // Backend::Process, say
/// let managers = Managers::new().with(threads)?.with(sandbox)?;
/// let wait = LeaseConfig::timeout(Duration::from_millis(500));
/// let _app = App::new()
///     .app_data(managers)
///     .service(web::scope("/quick").app_data(wait.clone().manager("threads")).route("", web::get().to(quick)))
///     .service(web::scope("/convert").app_data(wait.manager("sandbox")).route("", web::get().to(quick)));
/// # Ok(()) }
/// ```
pub struct Managers<S: 'static = ()> {
    by_name: Arc<BTreeMap<String, LeaseManager<S>>>,
}

impl<S: 'static> Clone for Managers<S> {
    fn clone(&self) -> Self {
        Self {
            by_name: Arc::clone(&self.by_name),
        }
    }
}

impl<S: 'static> Default for Managers<S> {
    fn default() -> Self {
        Self {
            by_name: Arc::new(BTreeMap::new()),
        }
    }
}

impl<S: 'static> std::fmt::Debug for Managers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managers")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Two managers of one name in a [`Managers`] registry: give each its own `name_prefix`.
///
/// *Available with the cargo feature `web`.*
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("two managers named {name:?} in one Managers registry: give each its own name_prefix")]
pub struct DuplicateManager {
    /// The name both have.
    pub name: String,
}

impl<S: 'static> Managers<S> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry with `manager` added under its name.
    ///
    /// # Errors
    /// [`DuplicateManager`] if a manager of that name is in already: routes could not tell the
    /// two apart.
    pub fn with(self, manager: LeaseManager<S>) -> Result<Self, DuplicateManager> {
        let name = manager.name().to_owned();
        if self.by_name.contains_key(&name) {
            return Err(DuplicateManager { name });
        }
        let mut by_name = (*self.by_name).clone();
        by_name.insert(name, manager);
        Ok(Self {
            by_name: Arc::new(by_name),
        })
    }

    /// The manager named `name`.
    pub fn get(&self, name: &str) -> Option<&LeaseManager<S>> {
        self.by_name.get(name)
    }

    /// The names in the registry, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Which manager a route leases from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pick {
    /// The one registered on its own (`web::Data<LeaseManager<S>>` or `LeaseManager<S>`).
    Single,
    /// The one of this name in the registry.
    Named(String),
}

/// Picks the manager of a route that wants `wanted` (its `LeaseConfig::manager`, if any), given
/// the name of the manager registered on its own (if one is) and the registry's names. A route
/// never gets a manager other than the one it names, nor one picked among several.
pub(super) fn pick(
    manager: &'static str,
    wanted: Option<&str>,
    single: Option<&str>,
    registry: &[&str],
) -> Result<Pick, LeasedError> {
    let available = || {
        let mut names: Vec<String> = registry.iter().map(|n| (*n).to_owned()).collect();
        names.extend(single.map(str::to_owned));
        names.sort();
        names
    };
    if single.is_none() && registry.is_empty() {
        return Err(LeasedError::MissingManager { manager });
    }
    match wanted {
        Some(wanted) if registry.contains(&wanted) => Ok(Pick::Named(wanted.to_owned())),
        Some(wanted) if single == Some(wanted) => Ok(Pick::Single),
        Some(wanted) => Err(LeasedError::WrongManager {
            manager,
            wanted: wanted.to_owned(),
            available: available(),
        }),
        None => match (single, registry) {
            (Some(_), []) => Ok(Pick::Single),
            (None, [only]) => Ok(Pick::Named((*only).to_owned())),
            _ => Err(LeasedError::AmbiguousManager {
                manager,
                available: available(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "leasepool::LeaseManager";

    #[test]
    fn a_named_route_gets_that_manager_or_a_500_naming_it() {
        assert_eq!(
            pick(M, Some("b"), None, &["a", "b"]),
            Ok(Pick::Named("b".into()))
        );
        assert_eq!(pick(M, Some("b"), Some("b"), &[]), Ok(Pick::Single));
        // The registry wins over a single manager of the same name (both are the app's).
        assert_eq!(
            pick(M, Some("b"), Some("b"), &["b"]),
            Ok(Pick::Named("b".into()))
        );
        assert_eq!(
            pick(M, Some("c"), Some("z"), &["b", "a"]),
            Err(LeasedError::WrongManager {
                manager: M,
                wanted: "c".into(),
                available: vec!["a".into(), "b".into(), "z".into()],
            })
        );
        // Never the only manager there, if it has another name.
        assert!(matches!(
            pick(M, Some("sandbox"), Some("threads"), &[]),
            Err(LeasedError::WrongManager { .. })
        ));
    }

    #[test]
    fn an_unnamed_route_gets_the_only_manager_and_never_picks_among_several() {
        assert_eq!(pick(M, None, Some("x"), &[]), Ok(Pick::Single));
        assert_eq!(pick(M, None, None, &["x"]), Ok(Pick::Named("x".into())));
        assert_eq!(
            pick(M, None, Some("x"), &["y"]),
            Err(LeasedError::AmbiguousManager {
                manager: M,
                available: vec!["x".into(), "y".into()],
            })
        );
        assert!(matches!(
            pick(M, None, None, &["x", "y"]),
            Err(LeasedError::AmbiguousManager { .. })
        ));
    }

    #[test]
    fn no_manager_at_all_is_missing_whatever_the_route_wants() {
        for wanted in [None, Some("a")] {
            assert_eq!(
                pick(M, wanted, None, &[]),
                Err(LeasedError::MissingManager { manager: M })
            );
        }
    }
}
