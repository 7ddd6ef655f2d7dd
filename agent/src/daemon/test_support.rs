//! Fixtures for the agent's unit tests: spec sets from YAML, containers as observed.

use std::collections::BTreeMap;
use std::path::Path;

use tend_specs::Desired;

use crate::reconcile::model::{Container, Health, RunState, instance_name};

/// Instance `i` of `service`, in `state`.
pub(super) fn container(service: &str, i: u32, state: RunState) -> Container {
    Container {
        id: format!("id-{service}-{i}"),
        name: instance_name(service, i),
        service: service.into(),
        instance: i,
        hash: String::new(),
        fields: BTreeMap::new(),
        image_id: String::new(),
        state,
        health: Health::None,
        exit_code: None,
    }
}

/// The spec set in `yaml`, which must be valid.
pub(super) fn desired(yaml: &str) -> Desired {
    tend_specs::load_str(Path::new("t.yaml"), yaml).expect("valid specs")
}

/// A document of a docker Service `name`, with `extra` lines under its spec.
pub(super) fn service(name: &str, extra: &str) -> String {
    format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: busybox:1\n{extra}")
}
