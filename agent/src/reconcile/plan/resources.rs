//! Planning the shared resources services need before they start: networks and volumes
//! the specs name that do not exist, and images to pull (or, with `pullPolicy: never`, to
//! report missing).

use std::collections::{BTreeMap, BTreeSet};

use tend_specs::service::{MountSource, PullPolicy};
use tend_specs::{Desired, Service};

use super::{Action, Builder, Reason, normalize_image};
use crate::reconcile::model::Observed;

/// The resources planned for this pass.
pub(super) struct Resources<'a> {
    /// The step creating or pulling each resource, by `network:NAME`, `volume:NAME`,
    /// `image:REF`.
    steps: BTreeMap<String, usize>,
    /// Networks some service uses, each with the first service that needs it.
    pub needed_networks: BTreeMap<&'a str, &'a str>,
    /// Images absent that may not be pulled: services using them create nothing.
    pub missing_images: BTreeSet<String>,
}

impl Resources<'_> {
    /// The steps `s`'s creates and starts wait for: its networks, volumes and image.
    pub fn prereqs(&self, s: &Service) -> Vec<usize> {
        let mut keys: Vec<String> = s.spec.networks.iter().map(|n| format!("network:{n}")).collect();
        for v in &s.spec.volumes {
            if let MountSource::Volume(name) = &v.source {
                keys.push(format!("volume:{name}"));
            }
        }
        keys.push(format!("image:{}", s.spec.image.as_deref().unwrap_or_default()));
        keys.iter().filter_map(|k| self.steps.get(k).copied()).collect()
    }
}

/// Plans the networks, volumes and images the Docker services of `desired` need.
pub(super) fn plan_resources<'a>(
    b: &mut Builder,
    desired: &'a Desired,
    observed: &Observed,
    pulled: &BTreeSet<String>,
) -> Resources<'a> {
    let mut steps: BTreeMap<String, usize> = BTreeMap::new();
    let (needed_networks, needed_volumes) = needed(desired);
    let existing_networks: BTreeSet<&str> = observed.networks.iter().map(|n| n.name.as_str()).collect();
    for (net, by) in &needed_networks {
        if !existing_networks.contains(net) {
            let action = Action::CreateNetwork { network: net.to_string() };
            let id = b.push(action, Reason::NeededBy { service: by.to_string() }, vec![], 0);
            steps.insert(format!("network:{net}"), id);
        }
    }
    for (vol, by) in &needed_volumes {
        if !observed.volumes.contains(*vol) {
            let action = Action::CreateVolume { volume: vol.to_string() };
            let id = b.push(action, Reason::NeededBy { service: by.to_string() }, vec![], 0);
            steps.insert(format!("volume:{vol}"), id);
        }
    }
    let missing_images = plan_images(b, desired, observed, pulled, &mut steps);
    Resources { steps, needed_networks, missing_images }
}

/// The networks and volumes services use, each with the first service (by name) using it.
type Needed<'a> = BTreeMap<&'a str, &'a str>;

fn needed(desired: &Desired) -> (Needed<'_>, Needed<'_>) {
    let mut networks = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    for s in desired.docker_services() {
        for n in &s.spec.networks {
            networks.entry(n.as_str()).or_insert(s.name.as_str());
        }
        for v in &s.spec.volumes {
            if let MountSource::Volume(name) = &v.source {
                volumes.entry(name.as_str()).or_insert(s.name.as_str());
            }
        }
    }
    (networks, volumes)
}

/// Plans a pull for each image its policy asks to pull; returns the images absent that may
/// not be pulled.
fn plan_images(
    b: &mut Builder,
    desired: &Desired,
    observed: &Observed,
    pulled: &BTreeSet<String>,
    steps: &mut BTreeMap<String, usize>,
) -> BTreeSet<String> {
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for s in desired.docker_services() {
        let Some(image) = s.spec.image.as_deref() else { continue };
        let key = format!("image:{image}");
        if steps.contains_key(&key) || missing.contains(image) {
            continue;
        }
        let present = observed.images.contains_key(&normalize_image(image));
        let reason = match s.spec.pull_policy {
            PullPolicy::Always if !pulled.contains(image) => Some(Reason::PullAlways),
            PullPolicy::IfNotPresent | PullPolicy::Always if !present && !pulled.contains(image) => {
                Some(Reason::ImageMissing)
            }
            PullPolicy::Never if !present => {
                missing.insert(image.to_string());
                None
            }
            _ => None,
        };
        if let Some(reason) = reason {
            let id = b.push(Action::PullImage { image: image.to_string() }, reason, vec![], 0);
            steps.insert(key, id);
        }
    }
    missing
}
