//! Security: who a caller is (authentication), what it may do (authorization by ACLs), and how
//! fast (quotas). One [`Auth`] per broker, shared by the auth layer and the api handlers.
//!
//! ```text
//! request ─▶ layer.rs: credentials → Caller (token, client certificate, anonymous);
//!            bad credentials → UNAUTHENTICATED; Raft → brokers only; request-rate quota
//!         ─▶ api handler: auth.authorize(caller, operation, resource) for each resource it
//!            touches → PERMISSION_DENIED (or a per-batch error) and an audit line
//!         ─▶ produce/subscribe: auth.throttle(caller, kind, bytes) → wait, tell the client
//! ```
//!
//! The ACLs and quotas ([`SecurityState`]) are changed only through the broker's control plane
//! (the metadata group in a cluster, the sled store on a single node), which calls
//! [`Auth::replace_state`] once a change is durable; every broker therefore enforces the same
//! set, and a change survives restarts like a topic does.
//!
//! Invariants:
//! - with authorization off, [`Auth::authorize`] allows everything and reads nothing;
//! - superusers (`auth.superusers`) and brokers (`auth.broker_principals`) are allowed
//!   everything without an ACL; everyone else needs a matching ALLOW and no matching DENY;
//! - a check happens where a call enters the cluster: a call one broker passes on to another
//!   was checked by the first and arrives as a broker's call.
//!
//! Never: import the broker, cluster or api layers (they depend on this module).

pub mod acl;
pub mod layer;
pub mod principal;
pub mod proto;
pub mod quota;
pub mod settings;
pub mod token;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use acl::{Acl, AclFilter, AclSet, Operation, PatternFilter, PatternType, Permission, ResourceType, CLUSTER_NAME};
pub use principal::{Caller, Source};
pub use quota::{Kind, Limits, QuotaEntity, QuotaSet};
pub use settings::{AuthSettings, JwtSettings, MtlsRule};

use crate::telemetry::metrics::{instruments, QuotaLabel};

/// Every broker's ACLs and quotas: what the control plane stores and replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityState {
    pub acls: AclSet,
    pub quotas: QuotaSet,
}

/// A change to the [`SecurityState`], as the control plane stores and replicates it. Applying
/// is deterministic: every broker that applies the same changes in the same order has the
/// same state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SecurityChange {
    AddAcls { acls: Vec<Acl> },
    RemoveAcls { filters: Vec<AclFilter> },
    AlterQuota { entity: QuotaEntity, set: Limits, remove: Vec<String> },
}

/// What applying a change did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeOutcome {
    pub acls_added: usize,
    pub acls_removed: Vec<Acl>,
    pub limits: Limits,
}

impl SecurityState {
    pub fn apply(&mut self, change: &SecurityChange) -> ChangeOutcome {
        match change {
            SecurityChange::AddAcls { acls } => {
                ChangeOutcome { acls_added: self.acls.add(acls), ..ChangeOutcome::default() }
            }
            SecurityChange::RemoveAcls { filters } => {
                ChangeOutcome { acls_removed: self.acls.remove(filters), ..ChangeOutcome::default() }
            }
            SecurityChange::AlterQuota { entity, set, remove } => {
                ChangeOutcome { limits: self.quotas.alter(entity, set, remove), ..ChangeOutcome::default() }
            }
        }
    }
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// No ACL allows it, or one denies it (PERMISSION_DENIED).
    #[error("{principal} is not allowed {operation} on {resource_type} {name:?}; an administrator can grant it with `tidelog acl add`")]
    Acl { principal: String, operation: Operation, resource_type: ResourceType, name: String },
    /// This broker's copy of the ACLs may be behind the cluster's (it is catching up on the
    /// metadata log after a restart or a partition): decided nowhere, retryable.
    #[error("this broker's ACLs are not current yet (it is catching up on the cluster's metadata); retry shortly")]
    NotCurrent,
}

/// Whether the ACLs this broker holds are the cluster's current ones.
pub type CurrentCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The broker's security: settings, token verifier, current ACLs and quotas, quota buckets.
pub struct Auth {
    settings: AuthSettings,
    jwt: Option<token::JwtVerifier>,
    state: RwLock<Arc<SecurityState>>,
    limiter: quota::Limiter,
    /// Set by the composition root from the control plane (a cluster member is current once
    /// it applied the metadata log up to the controller's commit point); unset: current.
    current: std::sync::OnceLock<CurrentCheck>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self::new(AuthSettings::default()).unwrap_or_else(|_| unreachable!("default settings have no key file"))
    }
}

impl Auth {
    /// From the settings; fails if the JWT key file cannot be read.
    pub fn new(settings: AuthSettings) -> Result<Self, token::TokenError> {
        let jwt = settings.jwt.as_ref().map(token::JwtVerifier::new).transpose()?;
        Ok(Self {
            settings,
            jwt,
            state: RwLock::new(Arc::default()),
            limiter: quota::Limiter::default(),
            current: std::sync::OnceLock::new(),
        })
    }

    /// Installs the check of whether this broker's ACLs are current (once; `node.rs`). While
    /// they are not, a call that needs an ACL is refused as retryable instead of decided on a
    /// stale copy: fail closed, never open.
    pub fn set_current_check(&self, check: CurrentCheck) {
        let _ = self.current.set(check);
    }

    fn is_current(&self) -> bool {
        self.current.get().is_none_or(|c| c())
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn jwt(&self) -> Option<&token::JwtVerifier> {
        self.jwt.as_ref()
    }

    /// The current ACLs and quotas.
    pub fn state(&self) -> Arc<SecurityState> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Installs a new state (the control plane, once it is durable).
    pub fn replace_state(&self, state: SecurityState) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }

    /// Whether a principal is allowed everything.
    pub fn is_superuser(&self, caller: &Caller) -> bool {
        caller.broker || self.settings.superusers.iter().any(|s| **s == *caller.principal)
    }

    /// Whether `principal` is one of the brokers'.
    pub fn is_broker_principal(&self, principal: &str) -> bool {
        self.settings.broker_principals.iter().any(|b| b == principal)
    }

    /// Whether ACLs are checked.
    pub fn authorization(&self) -> bool {
        self.settings.authorization
    }

    /// Decides a call's operation on a resource; logs a denial to the audit log.
    pub fn authorize(&self, caller: &Caller, op: Operation, rt: ResourceType, name: &str) -> Result<(), Denied> {
        if !self.settings.authorization || self.is_superuser(caller) {
            return Ok(());
        }
        if !self.is_current() {
            return Err(Denied::NotCurrent);
        }
        if self.state().acls.authorize(&caller.principal, caller.host, op, rt, name) {
            return Ok(());
        }
        Err(self.denied(caller, op, rt, name))
    }

    /// Like [`authorize`](Self::authorize), without the audit line (for listings that leave
    /// out what the caller may not see).
    pub fn allowed(&self, caller: &Caller, op: Operation, rt: ResourceType, name: &str) -> bool {
        !self.settings.authorization
            || self.is_superuser(caller)
            || (self.is_current() && self.state().acls.authorize(&caller.principal, caller.host, op, rt, name))
    }

    /// InitProducer: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic (Kafka's rule).
    pub fn authorize_idempotent(&self, caller: &Caller) -> Result<(), Denied> {
        if self.settings.authorization && !self.is_superuser(caller) && !self.is_current() {
            return Err(Denied::NotCurrent);
        }
        if self.allowed(caller, Operation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME)
            || self.state().acls.authorize_any(&caller.principal, caller.host, Operation::Write, ResourceType::Topic)
        {
            return Ok(());
        }
        Err(self.denied(caller, Operation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME))
    }

    fn denied(&self, caller: &Caller, op: Operation, rt: ResourceType, name: &str) -> Denied {
        // The audit line (target `tidelog::audit`; bounded per second like every warning).
        tracing::warn!(
            target: "tidelog::audit",
            principal = %caller.principal,
            host = ?caller.host,
            operation = ?op,
            resource_type = ?rt,
            resource = name,
            "denied"
        );
        instruments().authorization_denied.inc();
        Denied::Acl {
            principal: caller.principal.to_string(),
            operation: op,
            resource_type: rt,
            name: name.to_string(),
        }
    }

    /// Counts `amount` of `kind` against the caller's quota and returns how long it must
    /// wait (zero without a quota).
    pub fn throttle(&self, caller: &Caller, kind: Kind, amount: u64) -> Duration {
        let state = self.state();
        let Some((rate, bucket)) = state.quotas.resolve(kind, caller.user(), &caller.client_id) else {
            return Duration::ZERO;
        };
        let delay = self.limiter.record(kind, bucket, rate, amount);
        if !delay.is_zero() {
            let quota = match kind {
                Kind::Produce => "produce",
                Kind::Consume => "consume",
                Kind::Request => "request",
            };
            instruments().throttle_seconds.get_or_create(&QuotaLabel { quota }).inc_by(delay.as_secs_f64());
        }
        delay
    }
}
