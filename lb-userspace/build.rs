//! Builds lb-ebpf for the BPF target (nightly + bpf-linker) and puts the object in OUT_DIR,
//! where `dataplane::object` embeds it.
fn main() -> anyhow::Result<()> {
    // aya-build watches lb-ebpf; the map types it uses live in lb-common.
    println!("cargo:rerun-if-changed=../lb-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: "../lb-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
