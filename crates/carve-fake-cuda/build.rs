//! The library registers an exit handler and runs stream threads, so it must never be unmapped:
//! link the cdylib `-z nodelete` (a `dlclose` leaves it loaded, as the real driver stays).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
