//! Prints how many placed layouts and profile combinations each catalog GPU has, and how long
//! enumerating them takes.
use carve_model::{geometry, Catalog};
use std::time::Instant;

fn main() {
    let catalog = Catalog::embedded();
    for gpu in &catalog.gpus {
        let t = Instant::now();
        let placed = geometry::enumerate(gpu).len();
        let combos = geometry::combinations(gpu);
        let maximal = combos.iter().filter(|c| c.maximal).count();
        println!(
            "{:<14} {:>7} placed layouts {:>5} combinations {:>4} maximal  {:>8.2?}",
            gpu.key,
            placed,
            combos.len(),
            maximal,
            t.elapsed()
        );
    }
}
