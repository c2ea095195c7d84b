//! Kafka's ACL model and the one function that decides a call ([`AclSet::authorize`]).
//!
//! An ACL allows or denies one principal (or `User:*`), from one host (or `*`), one operation
//! on the resources of one type that a literal name (`*`: all) or a prefix selects.
//!
//! Invariants (the same as Kafka's `AclAuthorizer`):
//! - a DENY that matches wins over every ALLOW;
//! - an ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE; of ALTER_CONFIGS,
//!   DESCRIBE_CONFIGS; ALL allows (and a DENY of ALL denies) every operation;
//! - nothing matches: denied (superusers are decided before the ACLs are consulted).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::settings::check_principal;

/// The name of the one cluster resource (as Kafka's).
pub const CLUSTER_NAME: &str = "kafka-cluster";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    Literal,
    Prefixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Operation {
    /// Whether an ACL for `self` allows `op` (ALL, and Kafka's implied DESCRIBEs).
    fn allows(self, op: Operation) -> bool {
        use Operation::*;
        self == op
            || self == All
            || (op == Describe && matches!(self, Read | Write | Delete | Alter))
            || (op == DescribeConfigs && self == AlterConfigs)
    }

    /// Whether a DENY for `self` denies `op`.
    fn denies(self, op: Operation) -> bool {
        self == op || self == Operation::All
    }
}

/// As the CLI's flags spell them: `topic`, `describe-configs`, ...
fn kebab(debug: String) -> String {
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&kebab(format!("{self:?}")))
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&kebab(format!("{self:?}")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL. Ordered (field by field) so a set lists them stably.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub principal: String,
    /// An IP address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl Acl {
    /// Checks an ACL given by a client; the error says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        check_principal(&self.principal, true)?;
        if self.resource_name.is_empty() {
            return Err("an ACL needs a resource name (\"*\" for every one)".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!("the cluster resource is named {CLUSTER_NAME:?}"));
        }
        if self.pattern_type == PatternType::Prefixed && self.resource_name == "*" {
            return Err("a PREFIXED ACL needs a real prefix; use LITERAL \"*\" for every resource".into());
        }
        if self.host != "*" && self.host.parse::<IpAddr>().is_err() {
            return Err(format!("host {:?} must be an IP address or \"*\"", self.host));
        }
        Ok(())
    }

    /// Whether this ACL's resource pattern selects `name`.
    pub fn selects(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == name || self.resource_name == "*",
            PatternType::Prefixed => name.starts_with(&self.resource_name),
        }
    }

    fn applies_to(&self, principal: &str, host: Option<IpAddr>) -> bool {
        (self.principal == principal || self.principal == "User:*")
            && (self.host == "*" || host.is_some_and(|h| self.host.parse::<IpAddr>().is_ok_and(|a| a == h)))
    }
}

/// How a filter selects by pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternFilter {
    /// That pattern type, and the name exactly.
    Exact(PatternType),
    /// Every ACL that applies to the filter's name: literal, `*` and prefixes of it.
    Match,
}

/// Selects ACLs (a `None` field matches any value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern_type: Option<PatternFilter>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    pub fn matches(&self, a: &Acl) -> bool {
        let name_ok = match (&self.resource_name, self.pattern_type) {
            (None, _) => true,
            (Some(n), Some(PatternFilter::Match)) => a.selects(n),
            (Some(n), _) => a.resource_name == *n,
        };
        let pattern_ok = match self.pattern_type {
            Some(PatternFilter::Exact(p)) => p == a.pattern_type,
            None | Some(PatternFilter::Match) => true,
        };
        name_ok
            && pattern_ok
            && self.resource_type.is_none_or(|t| t == a.resource_type)
            && self.principal.as_ref().is_none_or(|p| *p == a.principal)
            && self.host.as_ref().is_none_or(|h| *h == a.host)
            && self.operation.is_none_or(|o| o == a.operation)
            && self.permission.is_none_or(|p| p == a.permission)
    }
}

/// Every ACL of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSet {
    acls: BTreeSet<Acl>,
}

impl AclSet {
    pub fn iter(&self) -> impl Iterator<Item = &Acl> {
        self.acls.iter()
    }

    pub fn len(&self) -> usize {
        self.acls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    /// Adds ACLs; returns how many were new.
    pub fn add(&mut self, acls: &[Acl]) -> usize {
        acls.iter().filter(|a| self.acls.insert((*a).clone())).count()
    }

    /// Removes every ACL any filter matches; returns them.
    pub fn remove(&mut self, filters: &[AclFilter]) -> Vec<Acl> {
        let gone: Vec<Acl> = self.acls.iter().filter(|a| filters.iter().any(|f| f.matches(a))).cloned().collect();
        for a in &gone {
            self.acls.remove(a);
        }
        gone
    }

    /// Whether `principal` from `host` may do `op` on the resource (see the module invariants;
    /// superusers are the caller's to decide first).
    pub fn authorize(
        &self,
        principal: &str,
        host: Option<IpAddr>,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        let mut allowed = false;
        for a in self.acls.iter().filter(|a| a.resource_type == rt && a.applies_to(principal, host) && a.selects(name))
        {
            match a.permission {
                Permission::Deny if a.operation.denies(op) => return false,
                Permission::Allow if a.operation.allows(op) => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    /// Whether `principal` from `host` may do `op` on at least one resource of type `rt` (an
    /// ALLOW exists that no literal-`*` DENY cancels): Kafka's rule for idempotent producers,
    /// who may init if they may write to any topic.
    pub fn authorize_any(&self, principal: &str, host: Option<IpAddr>, op: Operation, rt: ResourceType) -> bool {
        let applies = |a: &&Acl| a.resource_type == rt && a.applies_to(principal, host);
        let denied_everywhere = self.acls.iter().filter(applies).any(|a| {
            a.permission == Permission::Deny
                && a.operation.denies(op)
                && a.pattern_type == PatternType::Literal
                && a.resource_name == "*"
        });
        !denied_everywhere
            && self.acls.iter().filter(applies).any(|a| a.permission == Permission::Allow && a.operation.allows(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(rt: ResourceType, name: &str, pt: PatternType, p: &str, op: Operation, perm: Permission) -> Acl {
        Acl {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: p.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    #[test]
    fn deny_wins_implied_describe_prefix_and_wildcards() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut s = AclSet::default();
        s.add(&[
            acl(Topic, "orders", Literal, "User:alice", Write, Allow),
            acl(Topic, "pay.", Prefixed, "User:alice", Read, Allow),
            acl(Topic, "pay.secret", Literal, "User:alice", All, Deny),
            acl(Topic, "*", Literal, "User:*", Describe, Allow),
            acl(Group, "g", Literal, "User:bob", AlterConfigs, Allow),
        ]);
        let a = |p: &str, op, rt, n: &str| s.authorize(p, None, op, rt, n);
        assert!(a("User:alice", Write, Topic, "orders"));
        assert!(!a("User:alice", Read, Topic, "orders"), "write does not imply read");
        assert!(a("User:alice", Describe, Topic, "orders"));
        assert!(a("User:alice", Read, Topic, "pay.in"));
        assert!(!a("User:alice", Read, Topic, "pay.secret"), "deny wins");
        assert!(!a("User:alice", Describe, Topic, "pay.secret"), "deny ALL denies describe too");
        assert!(a("User:carol", Describe, Topic, "anything"), "User:* and literal *");
        assert!(!a("User:carol", Read, Topic, "anything"));
        assert!(a("User:bob", DescribeConfigs, Group, "g"));
        assert!(!a("User:bob", Read, Group, "g"));
        assert!(!a("User:bob", DescribeConfigs, Topic, "g"), "resource types are apart");
        assert!(s.authorize_any("User:alice", None, Write, Topic));
        assert!(!s.authorize_any("User:bob", None, Write, Topic));
    }

    #[test]
    fn host_filters_and_removal() {
        let mut s = AclSet::default();
        let mut one = acl(ResourceType::Topic, "t", PatternType::Literal, "User:a", Operation::Read, Permission::Allow);
        one.host = "10.0.0.1".into();
        s.add(std::slice::from_ref(&one));
        assert!(s.authorize("User:a", "10.0.0.1".parse().ok(), Operation::Read, ResourceType::Topic, "t"));
        assert!(!s.authorize("User:a", "10.0.0.2".parse().ok(), Operation::Read, ResourceType::Topic, "t"));
        assert!(!s.authorize("User:a", None, Operation::Read, ResourceType::Topic, "t"));
        let f = AclFilter {
            resource_name: Some("tx".into()),
            pattern_type: Some(PatternFilter::Match),
            ..AclFilter::default()
        };
        assert!(s.remove(&[f]).is_empty(), "MATCH of tx does not select literal t");
        let f = AclFilter { principal: Some("User:a".into()), ..AclFilter::default() };
        assert_eq!(s.remove(&[f]), vec![one]);
        assert!(s.is_empty());
        assert!(acl(ResourceType::Cluster, "x", PatternType::Literal, "User:a", Operation::Alter, Permission::Allow)
            .validate()
            .is_err());
        assert!(acl(ResourceType::Topic, "t", PatternType::Literal, "alice", Operation::Alter, Permission::Allow)
            .validate()
            .is_err());
    }
}
