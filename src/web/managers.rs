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

    /// The managers in the registry, in the order of their names.
    pub(super) fn all(&self) -> impl Iterator<Item = &LeaseManager<S>> {
        self.by_name.values()
    }
}

/// Picks a route's manager among the distinct managers of its type in `app_data` (their
/// names, in any order; the same manager seen twice — as `web::Data` and plain, or also in a
/// registry — counts once): the one named `wanted`, or, for a route that names none, the only
/// one. Its index in `names`. A route never gets a manager other than the one it names, nor
/// one picked among several — two distinct managers of the name it wants included.
pub(super) fn pick(
    manager: &'static str,
    wanted: Option<&str>,
    names: &[&str],
) -> Result<usize, LeasedError> {
    let available = || {
        let mut all: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        all.sort();
        all
    };
    let ambiguous = || LeasedError::AmbiguousManager {
        manager,
        available: available(),
    };
    if names.is_empty() {
        return Err(LeasedError::MissingManager { manager });
    }
    let Some(wanted) = wanted else {
        return match names {
            [_] => Ok(0),
            _ => Err(ambiguous()),
        };
    };
    let mut named = names.iter().enumerate().filter(|(_, n)| **n == wanted);
    match (named.next(), named.next()) {
        (Some((at, _)), None) => Ok(at),
        (Some(_), Some(_)) => Err(ambiguous()),
        (None, _) => Err(LeasedError::WrongManager {
            manager,
            wanted: wanted.to_owned(),
            available: available(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "leasepool::LeaseManager";

    #[test]
    fn a_named_route_gets_that_manager_or_a_500_naming_it() {
        assert_eq!(pick(M, Some("b"), &["a", "b"]), Ok(1));
        assert_eq!(pick(M, Some("b"), &["b"]), Ok(0));
        assert_eq!(pick(M, Some("a"), &["b", "z", "a"]), Ok(2));
        assert_eq!(
            pick(M, Some("c"), &["z", "b", "a"]),
            Err(LeasedError::WrongManager {
                manager: M,
                wanted: "c".into(),
                available: vec!["a".into(), "b".into(), "z".into()],
            })
        );
        // Never the only manager there, if it has another name.
        assert!(matches!(
            pick(M, Some("sandbox"), &["threads"]),
            Err(LeasedError::WrongManager { .. })
        ));
    }

    #[test]
    fn two_distinct_managers_of_the_wanted_name_are_ambiguous() {
        assert_eq!(
            pick(M, Some("b"), &["b", "a", "b"]),
            Err(LeasedError::AmbiguousManager {
                manager: M,
                available: vec!["a".into(), "b".into(), "b".into()],
            })
        );
    }

    #[test]
    fn an_unnamed_route_gets_the_only_manager_and_never_picks_among_several() {
        assert_eq!(pick(M, None, &["x"]), Ok(0));
        assert_eq!(
            pick(M, None, &["y", "x"]),
            Err(LeasedError::AmbiguousManager {
                manager: M,
                available: vec!["x".into(), "y".into()],
            })
        );
        // Two distinct managers of one name are two managers.
        assert!(matches!(
            pick(M, None, &["x", "x"]),
            Err(LeasedError::AmbiguousManager { .. })
        ));
    }

    #[test]
    fn the_registry_finds_each_manager_by_its_name_and_refuses_a_second_of_one_name() {
        let build = |name: &str| LeaseManager::builder().name_prefix(name).build().unwrap();
        let (a, b) = (build("a"), build("b"));
        let r = Managers::new()
            .with(b.clone())
            .unwrap()
            .with(a.clone())
            .unwrap();
        assert_eq!(r.names().collect::<Vec<_>>(), ["a", "b"]);
        assert!(r.get("a").is_some_and(|m| m.same_as(&a)));
        assert!(r.get("b").is_some_and(|m| m.same_as(&b)));
        assert!(r.get("c").is_none());
        let all: Vec<_> = r.all().collect();
        assert!(all.len() == 2 && all[0].same_as(&a) && all[1].same_as(&b));
        assert_eq!(
            r.clone().with(build("a")).unwrap_err(),
            DuplicateManager { name: "a".into() }
        );
        assert_eq!(Managers::<()>::new().names().count(), 0);
    }

    #[test]
    fn no_manager_at_all_is_missing_whatever_the_route_wants() {
        for wanted in [None, Some("a")] {
            assert_eq!(
                pick(M, wanted, &[]),
                Err(LeasedError::MissingManager { manager: M })
            );
        }
    }
}
