//! JSON Schema of the spec language, generated from the types (schemars), for editors
//! (yaml-language-server) and for `tend schema`. A golden copy is committed at
//! `specs/schema/tend.schema.json`; a test fails when it is out of date.

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::backup::BackupSpec;
use crate::load::API_VERSION;
use crate::service::ServiceSpec;
use crate::timer::TimerSpec;

/// `metadata` as the schema shows it.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Metadata {
    /// The object's name: a DNS label (lowercase letters, digits, `-`; at most 63).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    name: String,
    /// Labels for selecting objects (`tend maintain --selector app=ims`): at most 128, keys
    /// printable without spaces or `=` (at most 255 bytes), values without NUL (at most 4096
    /// bytes).
    #[serde(default)]
    #[schemars(extend("maxProperties" = crate::bounds::LABELS.max))]
    labels: std::collections::BTreeMap<String, String>,
}

/// The JSON Schema (draft 2020-12) of one spec document.
pub fn json_schema() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let metadata = generator.subschema_for::<Metadata>();
    let service = generator.subschema_for::<ServiceSpec>();
    let timer = generator.subschema_for::<TimerSpec>();
    let backup = generator.subschema_for::<BackupSpec>();
    let mut defs = serde_json::Map::new();
    for (name, schema) in generator.take_definitions(true) {
        defs.insert(name, schema);
    }
    let doc = |kind: &str, spec: Value| {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"const": API_VERSION},
                "kind": {"const": kind},
                "metadata": metadata.clone(),
                "spec": spec,
            },
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": false,
        })
    };
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tend.invalid/schema/tend.schema.json",
        "title": "tend spec document",
        "description": "One document of a tend spec file (apiVersion tend/v1).",
        "oneOf": [
            doc("Service", service.to_value()),
            doc("Timer", timer.to_value()),
            doc("Backup", backup.to_value()),
        ],
        "$defs": Value::Object(defs),
    });
    forbid_unknown_fields(&mut schema);
    schema
}

/// tend rejects unknown fields; say so in the schema so editors flag them too.
fn forbid_unknown_fields(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("type") == Some(&json!("object"))
                && map.contains_key("properties")
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), json!(false));
            }
            map.values_mut().for_each(forbid_unknown_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_unknown_fields),
        _ => {}
    }
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/tend.schema.json");
        let fresh = json_schema_text();
        if std::env::var_os("TEND_UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &fresh).expect("write schema");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == fresh,
            "specs/schema/tend.schema.json is out of date: run `TEND_UPDATE_SCHEMA=1 cargo test -p tend-specs schema` and commit it"
        );
    }

    #[test]
    fn committed_agent_config_schema_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/agent-config.schema.json");
        let fresh = crate::agent_config::json_schema_text();
        if std::env::var_os("TEND_UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &fresh).expect("write schema");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == fresh,
            "specs/schema/agent-config.schema.json is out of date: run `TEND_UPDATE_SCHEMA=1 cargo test -p tend-specs schema` and commit it"
        );
    }

    #[test]
    fn the_agent_config_schema_has_the_cluster_block_with_its_bounds() {
        let schema = crate::agent_config::json_schema();
        let defs = &schema["$defs"];
        let cluster = &defs["ClusterConfig"];
        assert_eq!(cluster["required"], json!(["name", "etcd"]));
        assert_eq!(cluster["additionalProperties"], json!(false));
        let props = &cluster["properties"];
        for field in ["name", "node", "address", "roles", "etcd", "leaseTTL"] {
            assert!(props.get(field).is_some(), "ClusterConfig lacks {field}: {props}");
        }
        assert_eq!(props.as_object().map(|p| p.len()), Some(6));
        assert_eq!(props["leaseTTL"]["default"], json!("10s"));
        assert_eq!(props["roles"]["maxItems"], json!(crate::agent_config::cluster::ROLES.max));
        let etcd = &defs["EtcdConfig"]["properties"];
        for field in ["endpoints", "caFile", "certFile", "keyFile", "usernameFile", "passwordFile"] {
            assert!(etcd.get(field).is_some(), "EtcdConfig lacks {field}: {etcd}");
        }
        assert_eq!((&etcd["endpoints"]["minItems"], &etcd["endpoints"]["maxItems"]), (&json!(1), &json!(16)));
        assert!(schema["properties"].get("cluster").is_some());
    }

    #[test]
    fn schema_lists_every_service_field() {
        let schema = json_schema();
        let props = &schema["$defs"]["ServiceSpec"]["properties"];
        for field in [
            "image",
            "pullPolicy",
            "env",
            "ports",
            "volumes",
            "healthcheck",
            "dependsOn",
            "restart",
            "replicas",
            "rollout",
            "placement",
        ] {
            assert!(props.get(field).is_some(), "schema lacks {field}: {props}");
        }
        assert_eq!(schema["$defs"]["ServiceSpec"]["additionalProperties"], json!(false));
        for field in ["exec", "group", "type", "pidFile", "enabled", "hooks"] {
            assert!(props.get(field).is_some(), "schema lacks {field}: {props}");
        }
    }

    #[test]
    fn schema_has_a_timer_document_with_every_field() {
        let schema = json_schema();
        let kinds: Vec<&Value> =
            schema["oneOf"].as_array().expect("oneOf").iter().map(|d| &d["properties"]["kind"]).collect();
        assert_eq!(kinds, [&json!({"const": "Service"}), &json!({"const": "Timer"}), &json!({"const": "Backup"})]);
        let props = &schema["$defs"]["TimerSpec"]["properties"];
        for field in [
            "schedule",
            "persistent",
            "randomizedDelay",
            "accuracy",
            "timezone",
            "concurrency",
            "runOn",
            "enabled",
            "timeout",
            "job",
        ] {
            assert!(props.get(field).is_some(), "schema lacks {field}: {props}");
        }
        assert_eq!(schema["$defs"]["TimerSpec"]["required"], json!(["job"]));
        let job = &schema["$defs"]["Job"];
        assert_eq!(job["required"], json!(["runtime"]));
        assert_eq!(job["additionalProperties"], json!(false));
        for field in [
            "image",
            "pullPolicy",
            "entrypoint",
            "command",
            "exec",
            "env",
            "volumes",
            "networks",
            "user",
            "group",
            "workingDir",
        ] {
            assert!(job["properties"].get(field).is_some(), "job schema lacks {field}");
        }
    }

    #[test]
    fn schema_has_a_placement_and_the_values_of_run_on() {
        let schema = json_schema();
        let defs = &schema["$defs"];
        let placement = &defs["Placement"];
        assert_eq!(placement["required"], json!(["role"]));
        assert_eq!(placement["additionalProperties"], json!(false));
        let props = &placement["properties"];
        for field in ["role", "spread", "maxUnavailable", "onLostLease", "lostLeaseGrace"] {
            assert!(props.get(field).is_some(), "Placement lacks {field}: {props}");
        }
        assert_eq!(props.as_object().map(|p| p.len()), Some(5));
        assert_eq!(
            (&props["spread"]["default"], &props["onLostLease"]["default"], &props["lostLeaseGrace"]["default"]),
            (&json!(true), &json!("keep"), &json!("30s"))
        );
        let values = |def: &str| -> Vec<Value> {
            defs[def]["oneOf"].as_array().map(|a| a.iter().map(|v| v["const"].clone()).collect()).unwrap_or_default()
        };
        assert_eq!(values("RunOn"), [json!("node"), json!("leader")]);
        assert_eq!(values("OnLostLease"), [json!("keep"), json!("stop")]);
    }

    #[test]
    fn schema_has_a_backup_document_with_every_field() {
        let schema = json_schema();
        let defs = &schema["$defs"];
        let backup = &defs["BackupSpec"];
        assert_eq!(backup["required"], json!(["source", "destination"]));
        assert_eq!(backup["additionalProperties"], json!(false));
        for field in
            ["schedule", "source", "quiesce", "destination", "copies", "retention", "compression", "restore", "drill"]
        {
            assert!(backup["properties"].get(field).is_some(), "schema lacks {field}: {backup}");
        }
        for (def, fields) in [
            ("Source", &["paths", "exec"][..]),
            ("ExecCommand", &["service", "runtime", "command"]),
            ("Quiesce", &["stop", "timeout"]),
            ("Destination", &["dir", "layout"]),
            ("CopyTarget", &["dir", "rsync", "retention"]),
            ("Retention", &["keepLast", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly"]),
            ("Compression", &["level", "threads"]),
            ("Restore", &["moveAsideTo", "exec", "vars"]),
            ("Drill", &["schedule", "check"]),
        ] {
            assert_eq!(defs[def]["additionalProperties"], json!(false), "{def}");
            for field in fields {
                assert!(defs[def]["properties"].get(field).is_some(), "{def} lacks {field}");
            }
            assert_eq!(defs[def]["properties"].as_object().map(|p| p.len()), Some(fields.len()), "{def}");
        }
        let level = &defs["Compression"]["properties"]["level"];
        assert_eq!((&level["minimum"], &level["maximum"], &level["default"]), (&json!(1), &json!(19), &json!(5)));
    }
}
