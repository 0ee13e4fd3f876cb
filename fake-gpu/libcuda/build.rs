fn main() {
    // Programs linked with -lcuda must record the real driver's name, so that they also run on
    // a machine with the real driver.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
