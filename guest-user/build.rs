//! Links the user-program binary with `linker.ld` for the guest target;
//! host builds (the library's unit tests) link as usual. It must never
//! add a link argument to a host build.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    for arg in [format!("-T{dir}/linker.ld"), "--no-pie".to_string()] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
