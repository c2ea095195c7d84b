//! The ACL and quota types as the public proto carries them (`SecurityService`), both ways:
//! the api layer decodes requests with these, and a broker passing a change on to the
//! controller encodes it again.

use tidelog_proto::v1 as pb;
use tidelog_proto::v1::{AclOperation as PO, AclPatternType as PP, AclPermission as PPm, AclResourceType as PR};

use super::acl::{Acl, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType};
use super::quota::{Limits, Part, QuotaEntity};

fn resource(r: i32) -> Result<Option<ResourceType>, String> {
    Ok(match PR::try_from(r).map_err(|_| format!("unknown resource type {r}"))? {
        PR::Unspecified | PR::Any => None,
        PR::Topic => Some(ResourceType::Topic),
        PR::Group => Some(ResourceType::Group),
        PR::Cluster => Some(ResourceType::Cluster),
        PR::TransactionalId => Some(ResourceType::TransactionalId),
    })
}

fn pattern(p: i32) -> Result<Option<PatternFilter>, String> {
    Ok(match PP::try_from(p).map_err(|_| format!("unknown pattern type {p}"))? {
        PP::Unspecified | PP::Any => None,
        PP::Literal => Some(PatternFilter::Exact(PatternType::Literal)),
        PP::Prefixed => Some(PatternFilter::Exact(PatternType::Prefixed)),
        PP::Match => Some(PatternFilter::Match),
    })
}

fn operation(o: i32) -> Result<Option<Operation>, String> {
    use Operation::*;
    Ok(match PO::try_from(o).map_err(|_| format!("unknown operation {o}"))? {
        PO::Unspecified | PO::Any => None,
        PO::All => Some(All),
        PO::Read => Some(Read),
        PO::Write => Some(Write),
        PO::Create => Some(Create),
        PO::Delete => Some(Delete),
        PO::Alter => Some(Alter),
        PO::Describe => Some(Describe),
        PO::ClusterAction => Some(ClusterAction),
        PO::DescribeConfigs => Some(DescribeConfigs),
        PO::AlterConfigs => Some(AlterConfigs),
        PO::IdempotentWrite => Some(IdempotentWrite),
    })
}

fn permission(p: i32) -> Result<Option<Permission>, String> {
    Ok(match PPm::try_from(p).map_err(|_| format!("unknown permission {p}"))? {
        PPm::Unspecified | PPm::Any => None,
        PPm::Allow => Some(Permission::Allow),
        PPm::Deny => Some(Permission::Deny),
    })
}

/// An ACL as a client gave it; every field must be concrete (no ANY) and valid.
pub fn acl_from_proto(b: &pb::AclBinding) -> Result<Acl, String> {
    let need = |what: &str| format!("an ACL needs a {what} (not ANY)");
    let pattern_type = match pattern(b.pattern_type)? {
        Some(PatternFilter::Exact(p)) => p,
        None if b.pattern_type == PP::Unspecified as i32 => PatternType::Literal,
        _ => return Err("an ACL's pattern type is LITERAL or PREFIXED".into()),
    };
    let acl = Acl {
        resource_type: resource(b.resource_type)?.ok_or_else(|| need("resource type"))?,
        resource_name: b.resource_name.clone(),
        pattern_type,
        principal: b.principal.clone(),
        host: if b.host.is_empty() { "*".into() } else { b.host.clone() },
        operation: operation(b.operation)?.ok_or_else(|| need("operation"))?,
        permission: permission(b.permission)?.ok_or_else(|| need("permission (ALLOW or DENY)"))?,
    };
    acl.validate()?;
    Ok(acl)
}

pub fn acl_to_proto(a: &Acl) -> pb::AclBinding {
    pb::AclBinding {
        resource_type: resource_to_proto(a.resource_type) as i32,
        resource_name: a.resource_name.clone(),
        pattern_type: pattern_to_proto(a.pattern_type) as i32,
        principal: a.principal.clone(),
        host: a.host.clone(),
        operation: operation_to_proto(a.operation) as i32,
        permission: permission_to_proto(a.permission) as i32,
    }
}

fn resource_to_proto(r: ResourceType) -> PR {
    match r {
        ResourceType::Topic => PR::Topic,
        ResourceType::Group => PR::Group,
        ResourceType::Cluster => PR::Cluster,
        ResourceType::TransactionalId => PR::TransactionalId,
    }
}

fn pattern_to_proto(p: PatternType) -> PP {
    match p {
        PatternType::Literal => PP::Literal,
        PatternType::Prefixed => PP::Prefixed,
    }
}

fn permission_to_proto(p: Permission) -> PPm {
    match p {
        Permission::Allow => PPm::Allow,
        Permission::Deny => PPm::Deny,
    }
}

fn operation_to_proto(o: Operation) -> PO {
    use Operation::*;
    match o {
        All => PO::All,
        Read => PO::Read,
        Write => PO::Write,
        Create => PO::Create,
        Delete => PO::Delete,
        Alter => PO::Alter,
        Describe => PO::Describe,
        ClusterAction => PO::ClusterAction,
        DescribeConfigs => PO::DescribeConfigs,
        AlterConfigs => PO::AlterConfigs,
        IdempotentWrite => PO::IdempotentWrite,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub fn filter_from_proto(f: &pb::AclBindingFilter) -> Result<AclFilter, String> {
    let pattern_type = pattern(f.pattern_type)?;
    if pattern_type == Some(PatternFilter::Match) && f.resource_name.is_empty() {
        return Err("a MATCH filter needs a resource name".into());
    }
    Ok(AclFilter {
        resource_type: resource(f.resource_type)?,
        resource_name: non_empty(&f.resource_name),
        pattern_type,
        principal: non_empty(&f.principal),
        host: non_empty(&f.host),
        operation: operation(f.operation)?,
        permission: permission(f.permission)?,
    })
}

pub fn filter_to_proto(f: &AclFilter) -> pb::AclBindingFilter {
    pb::AclBindingFilter {
        resource_type: f.resource_type.map_or(PR::Any, resource_to_proto) as i32,
        resource_name: f.resource_name.clone().unwrap_or_default(),
        pattern_type: match f.pattern_type {
            None => PP::Any,
            Some(PatternFilter::Match) => PP::Match,
            Some(PatternFilter::Exact(p)) => pattern_to_proto(p),
        } as i32,
        principal: f.principal.clone().unwrap_or_default(),
        host: f.host.clone().unwrap_or_default(),
        operation: f.operation.map_or(PO::Any, operation_to_proto) as i32,
        permission: f.permission.map_or(PPm::Any, permission_to_proto) as i32,
    }
}

fn part_from_proto(p: &Option<pb::QuotaEntityPart>) -> Result<Option<Part>, String> {
    match p.as_ref().and_then(|p| p.part.as_ref()) {
        None => Ok(None),
        Some(pb::quota_entity_part::Part::Default(true)) => Ok(Some(Part::Default)),
        Some(pb::quota_entity_part::Part::Default(false)) => Ok(None),
        Some(pb::quota_entity_part::Part::Name(n)) if n.is_empty() => {
            Err("a quota entity name must not be empty (use default)".into())
        }
        Some(pb::quota_entity_part::Part::Name(n)) => Ok(Some(Part::Name(n.clone()))),
    }
}

fn part_to_proto(p: &Option<Part>) -> Option<pb::QuotaEntityPart> {
    p.as_ref().map(|p| pb::QuotaEntityPart {
        part: Some(match p {
            Part::Name(n) => pb::quota_entity_part::Part::Name(n.clone()),
            Part::Default => pb::quota_entity_part::Part::Default(true),
        }),
    })
}

pub fn entity_from_proto(e: Option<&pb::QuotaEntity>) -> Result<QuotaEntity, String> {
    let e = e.ok_or("a quota needs an entity: a user, a client id, or both")?;
    let entity = QuotaEntity { user: part_from_proto(&e.user)?, client_id: part_from_proto(&e.client_id)? };
    if entity.user.is_none() && entity.client_id.is_none() {
        return Err("a quota needs an entity: a user, a client id, or both".into());
    }
    Ok(entity)
}

pub fn entity_to_proto(e: &QuotaEntity) -> pb::QuotaEntity {
    pb::QuotaEntity { user: part_to_proto(&e.user), client_id: part_to_proto(&e.client_id) }
}

pub fn limits_from_proto(l: Option<&pb::QuotaLimits>) -> Limits {
    l.map_or_else(Limits::default, |l| Limits {
        producer_byte_rate: l.producer_byte_rate,
        consumer_byte_rate: l.consumer_byte_rate,
        request_rate: l.request_rate,
    })
}

pub fn limits_to_proto(l: &Limits) -> pb::QuotaLimits {
    pb::QuotaLimits {
        producer_byte_rate: l.producer_byte_rate,
        consumer_byte_rate: l.consumer_byte_rate,
        request_rate: l.request_rate,
    }
}
