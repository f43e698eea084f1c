//! Links the kernel binary with `linker.ld` when it is built for the guest
//! target; host builds (unit tests of the library) are left alone.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-env-changed=GUEST_USER_ELF");
}
