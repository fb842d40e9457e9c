//! Pinned maps checked against the program object before they are adopted. aya's loader reuses a
//! map pinned under the same name whatever its shape; a map whose key or value layout changed
//! without the map ABI version moving (`pins::ABI_VERSION`) would then be read and written with
//! the wrong layout by programs and agent alike. Here a pin whose type, key size or value size
//! differ from the object's definition stops the agent with the map and the field named.
//! Sizes (max entries) may differ: a pinned table keeps the size it was created with. Flags are
//! not compared: the kernel adds some of its own (BPF_F_RDONLY_PROG on a devmap), and none of
//! lb's changes a layout.
use anyhow::{bail, Context as _, Result};
use aya::maps::MapInfo;

use super::pins::PinLayout;

/// What must match between a pinned map and the object's definition of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
}

/// Fail, naming the map and what differs, if a map pinned in `layout` does not match `object`.
pub fn check_pinned(layout: &PinLayout, object: &[u8]) -> Result<()> {
    let obj = aya_obj::Object::parse(object).context("parsing the lb BPF object")?;
    for (name, map) in &obj.maps {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        let pinned = Shape {
            // MapType's discriminants are the kernel's bpf_map_type numbers.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
        };
        let wanted = Shape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
        };
        if let Some(diff) = difference(pinned, wanted) {
            bail!(
                "the map pinned at {} is not this lb's {name}: {diff}. It was made by another \
                 build of lb with the same map version; stop the agent using it and run \
                 `lb-agent cleanup --pin-path {}` (flows in it are lost) before starting this one",
                path.display(),
                layout.root().display()
            );
        }
    }
    Ok(())
}

fn difference(pinned: Shape, wanted: Shape) -> Option<String> {
    let fields = [
        ("type", pinned.map_type, wanted.map_type),
        ("key size", pinned.key_size, wanted.key_size),
        ("value size", pinned.value_size, wanted.value_size),
    ];
    let diffs: Vec<String> = fields
        .iter()
        .filter(|(_, p, w)| p != w)
        .map(|(what, p, w)| format!("{what} {p} pinned, {w} in this build"))
        .collect();
    (!diffs.is_empty()).then(|| diffs.join(", "))
}
