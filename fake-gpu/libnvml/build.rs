fn main() {
    // Programs linked with -lnvidia-ml record the real library's name, so that they also run on a
    // machine with the real driver.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
}
