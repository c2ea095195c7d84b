//! `tidelog acl`, `tidelog quota`, `tidelog whoami`: the SecurityService from the command line,
//! shaped like Kafka's `kafka-acls` and `kafka-configs --entity-type users/clients`.

use serde_json::{json, Value};
use tidelog::proto::v1::{
    quota_entity_part, AclBinding, AclBindingFilter, AclOperation, AclPatternType, AclPermission, AclResourceType,
    AlterClientQuotasRequest, CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest, DescribeClientQuotasRequest,
    QuotaEntity, QuotaEntityPart, QuotaLimits, WhoAmIRequest,
};

use crate::output::{print_json, OutputFormat};

/// The resource an ACL command is about (one of them).
#[derive(Debug, clap::Args)]
#[group(multiple = false)]
pub struct ResourceArg {
    /// A topic (with --prefixed: every topic starting with it; "*": every topic).
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group (with --prefixed: every group starting with it; "*": every group).
    #[arg(long)]
    group: Option<String>,
    /// The cluster (topic creation, ACL and quota administration, idempotent producers).
    #[arg(long)]
    cluster: bool,
    /// A transactional id (with --prefixed: every id starting with it; "*": every id).
    #[arg(long)]
    transactional_id: Option<String>,
}

impl ResourceArg {
    fn resolve(&self) -> Option<(AclResourceType, String)> {
        match (&self.topic, &self.group, self.cluster, &self.transactional_id) {
            (Some(t), _, _, _) => Some((AclResourceType::Topic, t.clone())),
            (_, Some(g), _, _) => Some((AclResourceType::Group, g.clone())),
            (_, _, true, _) => Some((AclResourceType::Cluster, "kafka-cluster".into())),
            (_, _, _, Some(id)) => Some((AclResourceType::TransactionalId, id.clone())),
            _ => None,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) a principal operations on a resource.
    Add {
        /// `User:<name>`, or `User:*` for everyone.
        #[arg(long)]
        principal: String,
        /// read, write, create, delete, alter, describe, describe-configs, alter-configs,
        /// cluster-action, idempotent-write or all; repeat or separate with commas.
        #[arg(long, required = true, value_delimiter = ',')]
        operation: Vec<String>,
        #[command(flatten)]
        resource: ResourceArg,
        /// The name is a prefix.
        #[arg(long)]
        prefixed: bool,
        /// A DENY ACL (wins over every ALLOW).
        #[arg(long)]
        deny: bool,
        /// Only from this IP address (default: any host).
        #[arg(long, default_value = "*")]
        host: String,
    },
    /// List ACLs (all, or those matching the filter).
    List {
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        resource: ResourceArg,
        /// Every ACL that applies to the named resource (literal, "*" and prefixes of it), not
        /// only those naming it exactly.
        #[arg(long)]
        r#match: bool,
    },
    /// Remove the ACLs matching the filter (at least one of --principal or a resource).
    Remove {
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        resource: ResourceArg,
        /// Only this operation.
        #[arg(long)]
        operation: Option<String>,
    },
}

fn operation(s: &str) -> anyhow::Result<AclOperation> {
    Ok(match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "all" => AclOperation::All,
        "read" => AclOperation::Read,
        "write" => AclOperation::Write,
        "create" => AclOperation::Create,
        "delete" => AclOperation::Delete,
        "alter" => AclOperation::Alter,
        "describe" => AclOperation::Describe,
        "describe-configs" => AclOperation::DescribeConfigs,
        "alter-configs" => AclOperation::AlterConfigs,
        "cluster-action" => AclOperation::ClusterAction,
        "idempotent-write" => AclOperation::IdempotentWrite,
        other => anyhow::bail!(
            "unknown operation {other:?}: read, write, create, delete, alter, describe, describe-configs, \
             alter-configs, cluster-action, idempotent-write or all"
        ),
    })
}

/// A proto enum value's name as the flags spell it: `ACL_OPERATION_DESCRIBE_CONFIGS` →
/// `describe-configs`.
fn name(prefix: &str, full: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase().replace('_', "-")
}

fn acl_json(a: &AclBinding) -> Value {
    let rt = AclResourceType::try_from(a.resource_type).map_or("?", |r| r.as_str_name());
    let pt = AclPatternType::try_from(a.pattern_type).map_or("?", |p| p.as_str_name());
    let op = AclOperation::try_from(a.operation).map_or("?", |o| o.as_str_name());
    let perm = AclPermission::try_from(a.permission).map_or("?", |p| p.as_str_name());
    json!({
        "principal": a.principal,
        "permission": name("ACL_PERMISSION_", perm),
        "operation": name("ACL_OPERATION_", op),
        "resource_type": name("ACL_RESOURCE_TYPE_", rt),
        "resource_name": a.resource_name,
        "pattern_type": name("ACL_PATTERN_TYPE_", pt),
        "host": a.host,
    })
}

fn print_acls(acls: &[AclBinding], json_out: bool) {
    if json_out {
        print_json(&json!(acls.iter().map(acl_json).collect::<Vec<_>>()));
        return;
    }
    for a in acls {
        let j = acl_json(a);
        println!(
            "principal={} permission={} operation={} resource={}:{} pattern={} host={}",
            j["principal"].as_str().unwrap_or_default(),
            j["permission"].as_str().unwrap_or_default(),
            j["operation"].as_str().unwrap_or_default(),
            j["resource_type"].as_str().unwrap_or_default(),
            j["resource_name"].as_str().unwrap_or_default(),
            j["pattern_type"].as_str().unwrap_or_default(),
            j["host"].as_str().unwrap_or_default(),
        );
    }
}

fn filter(principal: Option<String>, resource: &ResourceArg, matching: bool) -> AclBindingFilter {
    let (rt, name) = resource.resolve().map_or((AclResourceType::Any, String::new()), |(t, n)| (t, n));
    AclBindingFilter {
        resource_type: rt as i32,
        resource_name: name,
        pattern_type: if matching { AclPatternType::Match } else { AclPatternType::Any } as i32,
        principal: principal.unwrap_or_default(),
        host: String::new(),
        operation: AclOperation::Any as i32,
        permission: AclPermission::Any as i32,
    }
}

pub async fn acl(broker: &crate::BrokerArg, command: AclCommand, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    let mut security = client.security();
    let json_out = format == OutputFormat::Json;
    match command {
        AclCommand::Add { principal, operation: ops, resource, prefixed, deny, host } => {
            let (rt, resource_name) = resource
                .resolve()
                .ok_or_else(|| anyhow::anyhow!("name a resource: --topic, --group, --cluster or --transactional-id"))?;
            let mut acls = Vec::new();
            for op in &ops {
                acls.push(AclBinding {
                    resource_type: rt as i32,
                    resource_name: resource_name.clone(),
                    pattern_type: if prefixed { AclPatternType::Prefixed } else { AclPatternType::Literal } as i32,
                    principal: principal.clone(),
                    host: host.clone(),
                    operation: operation(op)? as i32,
                    permission: if deny { AclPermission::Deny } else { AclPermission::Allow } as i32,
                });
            }
            let created = security.create_acls(CreateAclsRequest { acls: acls.clone() }).await?.into_inner().created;
            if json_out {
                print_json(&json!({"created": created, "acls": acls.iter().map(acl_json).collect::<Vec<_>>()}));
            } else {
                println!("added {created} ACL(s) ({} already existed)", acls.len() as u32 - created);
            }
        }
        AclCommand::List { principal, resource, r#match } => {
            let filter = filter(principal, &resource, r#match);
            let acls = security.describe_acls(DescribeAclsRequest { filter: Some(filter) }).await?.into_inner().acls;
            print_acls(&acls, json_out);
        }
        AclCommand::Remove { principal, resource, operation: op } => {
            anyhow::ensure!(
                principal.is_some() || resource.resolve().is_some(),
                "name what to remove: --principal and/or --topic, --group, --cluster, --transactional-id"
            );
            let mut f = filter(principal, &resource, false);
            if let Some(op) = op {
                f.operation = operation(&op)? as i32;
            }
            let removed = security.delete_acls(DeleteAclsRequest { filters: vec![f] }).await?.into_inner().acls;
            if json_out {
                print_json(&json!({"removed": removed.iter().map(acl_json).collect::<Vec<_>>()}));
            } else {
                println!("removed {} ACL(s)", removed.len());
                print_acls(&removed, false);
            }
        }
    }
    Ok(())
}

/// The entity a quota command is about (`kafka-configs`' flags).
#[derive(Debug, clap::Args)]
pub struct EntityArg {
    /// A principal's name (without `User:`).
    #[arg(long, conflicts_with = "user_defaults")]
    user: Option<String>,
    /// Every user without a quota of its own.
    #[arg(long)]
    user_defaults: bool,
    /// A client id.
    #[arg(long, conflicts_with = "client_defaults")]
    client: Option<String>,
    /// Every client id without a quota of its own.
    #[arg(long)]
    client_defaults: bool,
}

fn part(name: &Option<String>, default: bool) -> Option<QuotaEntityPart> {
    match (name, default) {
        (Some(n), _) => Some(QuotaEntityPart { part: Some(quota_entity_part::Part::Name(n.clone())) }),
        (None, true) => Some(QuotaEntityPart { part: Some(quota_entity_part::Part::Default(true)) }),
        _ => None,
    }
}

impl EntityArg {
    fn entity(&self) -> anyhow::Result<QuotaEntity> {
        let e = QuotaEntity {
            user: part(&self.user, self.user_defaults),
            client_id: part(&self.client, self.client_defaults),
        };
        anyhow::ensure!(
            e.user.is_some() || e.client_id.is_some(),
            "name the entity: --user/--user-defaults and/or --client/--client-defaults"
        );
        Ok(e)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Set limits (the others the entity has stay).
    Set {
        #[command(flatten)]
        entity: EntityArg,
        /// Bytes per second this entity may produce, per broker.
        #[arg(long)]
        producer_byte_rate: Option<u64>,
        /// Bytes per second this entity may consume, per broker.
        #[arg(long)]
        consumer_byte_rate: Option<u64>,
        /// Requests per second, per broker.
        #[arg(long)]
        request_rate: Option<f64>,
    },
    /// Remove limits: producer_byte_rate, consumer_byte_rate, request_rate (comma-separated).
    Remove {
        #[command(flatten)]
        entity: EntityArg,
        #[arg(long, required = true, value_delimiter = ',')]
        quota: Vec<String>,
    },
    /// Every quota; with --user and/or --client also the limits such a client gets.
    Describe {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        client: Option<String>,
    },
}

fn part_text(p: &Option<QuotaEntityPart>) -> Value {
    match p.as_ref().and_then(|p| p.part.as_ref()) {
        Some(quota_entity_part::Part::Name(n)) => json!(n),
        Some(quota_entity_part::Part::Default(_)) => json!("<default>"),
        None => Value::Null,
    }
}

fn limits_json(l: &QuotaLimits) -> Value {
    json!({
        "producer_byte_rate": l.producer_byte_rate,
        "consumer_byte_rate": l.consumer_byte_rate,
        "request_rate": l.request_rate,
    })
}

fn limits_text(l: &QuotaLimits) -> String {
    let mut out = Vec::new();
    if let Some(v) = l.producer_byte_rate {
        out.push(format!("producer_byte_rate={v}"));
    }
    if let Some(v) = l.consumer_byte_rate {
        out.push(format!("consumer_byte_rate={v}"));
    }
    if let Some(v) = l.request_rate {
        out.push(format!("request_rate={v}"));
    }
    if out.is_empty() {
        "unlimited".into()
    } else {
        out.join(" ")
    }
}

pub async fn quota(broker: &crate::BrokerArg, command: QuotaCommand, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    let mut security = client.security();
    let json_out = format == OutputFormat::Json;
    let (entity, set, remove) = match command {
        QuotaCommand::Set { entity, producer_byte_rate, consumer_byte_rate, request_rate } => {
            let set = QuotaLimits { producer_byte_rate, consumer_byte_rate, request_rate };
            anyhow::ensure!(
                producer_byte_rate.is_some() || consumer_byte_rate.is_some() || request_rate.is_some(),
                "set at least one of --producer-byte-rate, --consumer-byte-rate, --request-rate"
            );
            (entity.entity()?, Some(set), Vec::new())
        }
        QuotaCommand::Remove { entity, quota } => (entity.entity()?, None, quota),
        QuotaCommand::Describe { user, client } => {
            let req = DescribeClientQuotasRequest {
                effective_for_user: user.unwrap_or_default(),
                effective_for_client_id: client.unwrap_or_default(),
            };
            let resp = security.describe_client_quotas(req).await?.into_inner();
            if json_out {
                let quotas: Vec<Value> = resp
                    .quotas
                    .iter()
                    .map(|q| {
                        let e = q.entity.clone().unwrap_or_default();
                        json!({"user": part_text(&e.user), "client_id": part_text(&e.client_id),
                               "limits": limits_json(&q.limits.unwrap_or_default())})
                    })
                    .collect();
                print_json(&json!({"quotas": quotas, "effective": resp.effective.as_ref().map(limits_json)}));
            } else {
                for q in &resp.quotas {
                    let e = q.entity.clone().unwrap_or_default();
                    println!(
                        "user={} client_id={} {}",
                        part_text(&e.user).as_str().unwrap_or("-"),
                        part_text(&e.client_id).as_str().unwrap_or("-"),
                        limits_text(&q.limits.unwrap_or_default())
                    );
                }
                if let Some(e) = &resp.effective {
                    println!("effective {}", limits_text(e));
                }
            }
            return Ok(());
        }
    };
    let req = AlterClientQuotasRequest { entity: Some(entity), set, remove };
    let limits = security.alter_client_quotas(req).await?.into_inner().limits.unwrap_or_default();
    if json_out {
        print_json(&limits_json(&limits));
    } else {
        println!("{}", limits_text(&limits));
    }
    Ok(())
}

pub async fn whoami(broker: &crate::BrokerArg, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    let w = client.security().who_am_i(WhoAmIRequest {}).await?.into_inner();
    if format == OutputFormat::Json {
        print_json(&json!({"principal": w.principal, "authenticated_by": w.authenticated_by,
            "authorization_enabled": w.authorization_enabled, "superuser": w.superuser, "client_id": w.client_id}));
    } else {
        println!(
            "principal={} authenticated_by={} authorization={} superuser={} client_id={}",
            w.principal, w.authenticated_by, w.authorization_enabled, w.superuser, w.client_id
        );
    }
    Ok(())
}
