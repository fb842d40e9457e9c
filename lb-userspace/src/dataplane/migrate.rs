//! Pinned state of earlier lb releases that is carried over rather than dropped, so that an
//! upgrade keeps every flow: only maps the kernel never reads change this way (a map the
//! programs use changes with `ABI_VERSION`).
use super::reconcile::{ServiceMaps as _, Write};
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use lb_common::{map_names as names, ServiceName};

use super::{maps::Maps, pins::PinLayout};

/// `LB_SERVICE_NAMES` of releases whose port names were at most 15 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct ServiceNameV1 {
    name: [u8; 128],
    port_name: [u8; 16],
    proto: u8,
    policy: u8,
    _pad: [u8; 6],
}

// SAFETY: repr(C), Copy, every padding byte an explicit field.
unsafe impl aya::Pod for ServiceNameV1 {}

impl From<ServiceNameV1> for ServiceName {
    fn from(old: ServiceNameV1) -> Self {
        let mut new = ServiceName {
            name: old.name,
            proto: old.proto,
            policy: old.policy,
            ..Default::default()
        };
        new.port_name[..old.port_name.len()].copy_from_slice(&old.port_name);
        new
    }
}

/// Copy a previous release's set names into `LB_SVC_NAMES` and remove its map, so the
/// reconciler recognises the sets it adopts (and keeps their ids, which flows name). Names
/// already in the new map win: a crash mid-way is finished by the next start.
pub fn service_names(layout: &PinLayout, maps: &mut Maps) -> Result<()> {
    let path = layout.map(names::SERVICE_NAMES_V1);
    if !path.exists() {
        return Ok(());
    }
    let old: HashMap<MapData, u32, ServiceNameV1> =
        HashMap::try_from(aya::maps::Map::from_map_data(MapData::from_pin(&path)?)?)
            .with_context(|| format!("{} has an unexpected type", path.display()))?;
    let mut copied = 0;
    for entry in old.iter() {
        let (id, name) = entry?;
        if maps.service_names.get(&id, 0).is_err() {
            maps.write(&Write::<Ipv4Addr>::Name(id, name.into()))?;
            copied += 1;
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    tracing::info!(
        copied,
        "set names migrated from {}",
        names::SERVICE_NAMES_V1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_name_keeps_every_field() {
        let mut old = ServiceNameV1 {
            name: [0; 128],
            port_name: [0; 16],
            proto: 17,
            policy: 1,
            _pad: [0; 6],
        };
        old.name[..6].copy_from_slice(b"ns/svc");
        old.port_name.copy_from_slice(b"fifteen-chars-x\0");
        let new = ServiceName::from(old);
        assert_eq!(&new.name[..7], b"ns/svc\0");
        assert_eq!(&new.port_name[..16], b"fifteen-chars-x\0");
        assert!(new.port_name[16..].iter().all(|b| *b == 0));
        assert_eq!((new.proto, new.policy), (17, 1));
    }
}
