//! Simulator speed: one simulated hour of 100 tenants (ten GPUs: five time-sliced by ten tenants
//! each, five split into MIG slices), events per second and wall time. Figures only.
//!
//! `cargo run --release -p carve-simulate --example bench_sim`

use carve_simulate::*;
use std::time::Instant;

fn tenant(i: usize, placement: Placement) -> Tenant {
    Tenant {
        name: format!("t{i}"),
        load: Load {
            arrivals: if i.is_multiple_of(3) {
                Arrivals::Bursty {
                    rate: 40.0,
                    on_s: 2.0,
                    off_s: 3.0,
                }
            } else {
                Arrivals::Poisson {
                    rate: 15.0 + (i % 7) as f64 * 2.0,
                }
            },
            work_ms: 2.0 + (i % 5) as f64,
            service: if i.is_multiple_of(2) {
                Service::Exponential
            } else {
                Service::Lognormal { cv: 1.0 }
            },
            memory_bound: 0.3,
        },
        placement,
        share: None,
    }
}

fn main() {
    let hour = 3600.0;
    let t0 = Instant::now();
    let mut events = 0u64;
    let mut requests = 0u64;
    for g in 0..10 {
        let tenants: Vec<Tenant> = (0..10)
            .map(|k| {
                let i = g * 10 + k;
                if g < 5 {
                    tenant(i, Placement::TimeShared)
                } else {
                    // Ten tenants on 1g-sized slices of two GPUs' worth: 1/7 SMs, 1/8 bandwidth.
                    tenant(
                        i,
                        Placement::Slice {
                            sm: 1.0 / 7.0,
                            bandwidth: 1.0 / 8.0,
                        },
                    )
                }
            })
            .collect();
        let r = simulate(&tenants, &Slicing::default(), hour, g as u64).expect("default settings");
        events += r.events;
        requests += r.tenants.iter().map(|t| t.requests).sum::<u64>();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "100 tenants, 1 simulated hour: {requests} requests, {events} events in {s:.2} s = {:.1} M events/s",
        events as f64 / s / 1e6
    );
}
