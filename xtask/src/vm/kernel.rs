//! Debian kernel packages for the VM: the newest `linux-image-<version>-amd64-unsigned` of a
//! series (6.1 is Debian 12's, 6.12 its backport) that the machine's apt sources offer, unpacked
//! once into a cache and reused. The unsigned image because the VM boots it directly (no
//! Secure Boot shim), and the generic flavour because -cloud lacks drivers the VM uses.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, command, output};
use crate::setup;

/// A kernel ready to boot: its image, next to `lib/modules/<release>` where virtme-ng finds the
/// modules (it looks beside the image's `boot/` directory).
pub struct Kernel {
    pub package: String,
    pub release: String,
    pub vmlinuz: PathBuf,
}

/// A package name's version, e.g. "6.1.0-56" or "6.12.117+deb12".
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    text: String,
    /// The three dotted numbers, then Debian's ABI number (0 when the version has none), so
    /// that comparing them orders versions.
    order: [u64; 4],
}

impl Version {
    /// "6.1.0-56" → [6, 1, 0, 56]; "6.12.117+deb12" → [6, 12, 117, 0]. Flavours other than the
    /// generic one ("6.1.0-56-cloud", "6.12.117+deb12-rt") and anything unexpected give None.
    fn parse(text: &str) -> Option<Version> {
        let (dotted, abi) = match text.split_once('-') {
            Some((dotted, abi)) => (dotted, abi.parse().ok()?),
            None => {
                let (dotted, debian) = text.split_once("+deb")?;
                debian.parse::<u64>().ok()?;
                (dotted, 0)
            }
        };
        let mut numbers = dotted.split('.').map(|n| n.parse::<u64>().ok());
        let order = [numbers.next()??, numbers.next()??, numbers.next()??, abi];
        numbers.next().is_none().then(|| Version {
            text: text.to_owned(),
            order,
        })
    }

    fn of_package(package: &str) -> Option<Version> {
        let text = package
            .strip_prefix("linux-image-")?
            .strip_suffix("-amd64-unsigned")?;
        Version::parse(text)
    }

    /// "6.1", what `--kernel` names.
    fn series(&self) -> String {
        format!("{}.{}", self.order[0], self.order[1])
    }

    fn package(&self) -> String {
        format!("linux-image-{}-amd64-unsigned", self.text)
    }

    /// `uname -r` of this kernel, also its directory names under `boot/` and `lib/modules/`.
    fn release(&self) -> String {
        format!("{}-amd64", self.text)
    }
}

/// The newest kernel of `series` (e.g. "6.1"), downloaded and unpacked under `cache` unless it
/// is there already. Stale apt lists are refreshed once: on a fresh machine they may be missing,
/// and an old list names a package the mirror has dropped.
pub fn fetch(series: &str, cache: &Path) -> Result<Kernel> {
    let root = setup::is_root()?;
    let attempt = || newest(series).and_then(|v| unpacked(&v, cache));
    attempt().or_else(|err| {
        if !root {
            return Err(err);
        }
        eprintln!("xtask: {err:#}; refreshing the apt lists and retrying");
        cmd::run(&mut setup::apt("update"))?;
        attempt()
    })
}

fn newest(series: &str) -> Result<Version> {
    let names = output(&mut command("apt-cache", "pkgnames linux-image-")).unwrap_or_default();
    let all: Vec<Version> = names.lines().filter_map(Version::of_package).collect();
    if let Some(newest) = all
        .iter()
        .filter(|v| v.series() == series)
        .max_by_key(|v| v.order)
    {
        return Ok(newest.clone());
    }
    let offered: BTreeSet<[u64; 2]> = all.iter().map(|v| [v.order[0], v.order[1]]).collect();
    let offered: Vec<String> = offered.iter().map(|[a, b]| format!("{a}.{b}")).collect();
    bail!(
        "no Debian kernel package linux-image-{series}.*-amd64-unsigned in the apt sources; \
         series offered: [{}]",
        offered.join(", ")
    )
}

/// The cached tree of `version`, made on first use: `apt-get download`, `dpkg -x` into a
/// scratch directory, `depmod` (the package ships no modules.dep; modprobe in the guest needs
/// it), then renamed into place so that an interrupted run never leaves a half tree behind.
/// Older releases of the same series are removed then.
fn unpacked(version: &Version, cache: &Path) -> Result<Kernel> {
    let release = version.release();
    let dir = cache.join(&release);
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if vmlinuz.is_file() {
        setup::ok(&format!("kernel {release} in {}", dir.display()));
    } else {
        setup::installing(&format!("kernel {release} into {}", dir.display()));
        unpack(version, cache, &dir)?;
        remove_older(version, cache)?;
    }
    if !vmlinuz.is_file() {
        bail!("{} has no {}", version.package(), vmlinuz.display());
    }
    Ok(Kernel {
        package: version.package(),
        release,
        vmlinuz,
    })
}

fn unpack(version: &Version, cache: &Path, dir: &Path) -> Result<()> {
    let scratch = cache.join(format!("{}.partial", version.release()));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // As root, apt downloads as the unprivileged _apt user, which cannot write into root's
    // cache directory; apt still checks the package against the signed index.
    let mut download = command("apt-get", "-o APT::Sandbox::User=root download");
    cmd::run(download.arg(version.package()).current_dir(&scratch))?;
    let deb = fs::read_dir(&scratch)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = scratch.join("tree");
    cmd::run(command("dpkg", "-x").arg(&deb).arg(&tree))?;
    cmd::run(
        command("/sbin/depmod", "-b")
            .arg(&tree)
            .arg(version.release()),
    )?;
    fs::rename(&tree, dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn remove_older(version: &Version, cache: &Path) -> Result<()> {
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let cached = name.strip_suffix("-amd64").and_then(Version::parse);
        if cached.is_some_and(|c| c.series() == version.series() && c != *version) {
            eprintln!("xtask: removing the older kernel {}", path.display());
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_amd64_packages_are_recognised() {
        let v = Version::of_package("linux-image-6.1.0-56-amd64-unsigned").unwrap();
        assert_eq!(
            (v.series(), v.release()),
            ("6.1".into(), "6.1.0-56-amd64".into())
        );
        let v = Version::of_package("linux-image-6.12.117+deb12-amd64-unsigned").unwrap();
        assert_eq!(v.series(), "6.12");
        assert_eq!(v.release(), "6.12.117+deb12-amd64");
        assert_eq!(v.package(), "linux-image-6.12.117+deb12-amd64-unsigned");
        for other in [
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-rt-amd64-unsigned",
            "linux-image-6.1.0-56-amd64",
            "linux-image-amd64",
            "linux-image-6.1-56-amd64-unsigned",
        ] {
            assert_eq!(Version::of_package(other), None, "{other}");
        }
    }

    #[test]
    fn newer_abi_and_patch_levels_order_higher() {
        let order = |p: &str| Version::parse(p).unwrap().order;
        assert!(order("6.1.0-56") > order("6.1.0-9"));
        assert!(order("6.12.117+deb12") > order("6.12.99+deb12"));
    }
}
