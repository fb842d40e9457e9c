//! Opening the pinned maps, and saying what to do when that fails.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use lb_common::ABI_VERSION;

use crate::dataplane::{Maps, PinLayout, DEFAULT_PIN_PATH};

/// Why the maps could not be read. Each message names the path and what to try.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} does not exist: no lb maps are pinned there.\n\
         lb-agent pins its maps under its --pin-path (default {DEFAULT_PIN_PATH}); give lbctl \
         the same --pin-path. If that is already the case, lb-agent has probably not run on \
         this node yet (or bpffs is not mounted on /sys/fs/bpf)."
    )]
    NoPinPath { path: PathBuf },

    #[error(
        "{path} holds no lb maps ({maps_dir} is missing): lb-agent has probably not run with \
         --pin-path {path} yet (the default is {DEFAULT_PIN_PATH})."
    )]
    NoMaps { path: PathBuf, maps_dir: PathBuf },

    #[error(
        "{path} holds maps of another lb version ({found}), and this lbctl reads only \
         v{ABI_VERSION} (ABI version {ABI_VERSION}): their layout is not the one it knows, so it \
         shows nothing rather than garbage. Use the lbctl of the lb release that runs on this \
         node.",
        found = found.join(", ")
    )]
    ForeignVersion { path: PathBuf, found: Vec<String> },

    #[error(
        "the maps under {maps_dir} were written by an lb with ABI version {version}, and this \
         lbctl understands ABI version {ABI_VERSION}: it shows nothing rather than garbage. Use \
         the lbctl of the lb release that runs on this node."
    )]
    AbiMismatch { maps_dir: PathBuf, version: u32 },

    #[error(
        "the maps under {maps_dir} are not the ones this lbctl (ABI version {ABI_VERSION}) \
         expects: {detail}. They were probably made by another lb version; use the lbctl of the \
         lb release that runs on this node."
    )]
    Incompatible { maps_dir: PathBuf, detail: String },

    #[error(
        "the maps under {maps_dir} are incomplete ({detail}). An lb-agent that is starting \
         creates them one after the other: if one is, retry in a few seconds. If this stays so, \
         they were made by an older lb release, which lacked this map: use the lbctl of the lb \
         release that runs on this node (or upgrade the agent, which adds it)."
    )]
    Incomplete { maps_dir: PathBuf, detail: String },

    #[error(
        "{path} is not on a BPF filesystem, where lb pins its maps (default {DEFAULT_PIN_PATH}): \
         give lbctl the agent's --pin-path; if /sys/fs/bpf is not mounted, the agent has not run \
         (mount -t bpf bpf /sys/fs/bpf)."
    )]
    NotBpffs { path: PathBuf },

    #[error(
        "permission denied reading {path}: reading BPF maps needs privileges; run lbctl as root \
         (or with CAP_BPF, e.g. `sudo lbctl ...`)."
    )]
    PermissionDenied { path: PathBuf },

    #[error("reading {path}: {detail}")]
    Other { path: PathBuf, detail: String },
}

/// Open the maps an agent pinned under `pin_path`.
pub fn open(pin_path: &Path) -> Result<Maps, OpenError> {
    let layout = PinLayout::new(pin_path);
    let path = pin_path.to_path_buf();
    let maps_dir = layout.maps_dir();
    if let Err(e) = fs::metadata(pin_path) {
        return Err(match e.kind() {
            io::ErrorKind::NotFound => OpenError::NoPinPath { path },
            io::ErrorKind::PermissionDenied => OpenError::PermissionDenied { path },
            _ => OpenError::Other {
                path,
                detail: e.to_string(),
            },
        });
    }
    if let Err(e) = fs::metadata(&maps_dir) {
        return Err(match e.kind() {
            io::ErrorKind::NotFound => {
                let mut found = layout.foreign_versions();
                found.sort();
                if found.is_empty() {
                    OpenError::NoMaps { path, maps_dir }
                } else {
                    OpenError::ForeignVersion { path, found }
                }
            }
            io::ErrorKind::PermissionDenied => OpenError::PermissionDenied { path: maps_dir },
            _ => OpenError::Other {
                path: maps_dir,
                detail: e.to_string(),
            },
        });
    }
    if !on_bpffs(&maps_dir) {
        return Err(OpenError::NotBpffs { path });
    }
    let maps = Maps::open_pinned(&layout).map_err(|e| classify(e, &maps_dir))?;
    let config = maps.config().map_err(|e| classify(e, &maps_dir))?;
    // 0: the agent created the maps but has not written its config yet.
    if config.abi_version != ABI_VERSION && config.abi_version != 0 {
        return Err(OpenError::AbiMismatch {
            maps_dir,
            version: config.abi_version,
        });
    }
    Ok(maps)
}

/// A failure while opening or first reading the maps, by its cause.
fn classify(e: anyhow::Error, maps_dir: &Path) -> OpenError {
    let maps_dir = maps_dir.to_path_buf();
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            let denied = io.kind() == io::ErrorKind::PermissionDenied
                || matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            if denied {
                return OpenError::PermissionDenied { path: maps_dir };
            }
            if io.kind() == io::ErrorKind::NotFound {
                return OpenError::Incomplete {
                    maps_dir,
                    detail: format!("{e:#}"),
                };
            }
        }
        if let Some(map) = cause.downcast_ref::<aya::maps::MapError>() {
            use aya::maps::MapError::*;
            if matches!(
                map,
                InvalidMapType { .. } | InvalidKeySize { .. } | InvalidValueSize { .. }
            ) {
                return OpenError::Incompatible {
                    maps_dir,
                    detail: format!("{e:#}"),
                };
            }
        }
    }
    OpenError::Other {
        path: maps_dir,
        detail: format!("{e:#}"),
    }
}

/// Whether `path` is on bpffs (unknown counts as yes: opening the maps will tell).
fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return true;
    };
    // SAFETY: statfs into a zeroed struct we own, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return true;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lbctl-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn message(path: &Path) -> String {
        match open(path) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_pin_path_names_the_option_and_the_default() {
        let scratch = Scratch::new("missing");
        let path = scratch.0.join("nothing-here");
        let msg = message(&path);
        assert!(msg.starts_with(&format!("{} does not exist", path.display())));
        assert!(msg.contains("--pin-path (default /sys/fs/bpf/lb)"), "{msg}");
        assert!(msg.contains("lb-agent has probably not run"), "{msg}");
    }

    #[test]
    fn other_versions_and_empty_directories() {
        let scratch = Scratch::new("versions");
        let msg = message(&scratch.0);
        assert!(msg.contains("holds no lb maps"), "{msg}");
        fs::create_dir(scratch.0.join("v999")).unwrap();
        fs::create_dir(scratch.0.join("v7")).unwrap();
        let msg = message(&scratch.0);
        assert!(
            msg.contains("another lb version (v7, v999)")
                && msg.contains(&format!("reads only v{ABI_VERSION}")),
            "{msg}"
        );
        // Ours beside them, but not on bpffs.
        fs::create_dir(scratch.0.join(format!("v{ABI_VERSION}"))).unwrap();
        let msg = message(&scratch.0);
        assert!(msg.contains("is not on a BPF filesystem"), "{msg}");
    }
}
