// Rebuild when bpf-linker changes (a new LLVM can change the generated code), as aya-template does.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
