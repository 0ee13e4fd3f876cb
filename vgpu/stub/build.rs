fn main() {
    // Programs linked with -lcuda record the driver's real name, so that the same binary runs
    // on the stub, the simulated driver or a real one.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
