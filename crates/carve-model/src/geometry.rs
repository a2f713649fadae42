//! Placement geometry: which sets of GPU instances one GPU can hold, where they go, and proofs
//! that a set cannot be placed.
//!
//! Rules (MIG User Guide; nvml.h), checked by [`check`]:
//! 1. every instance starts at one of its profile's allowed starts;
//! 2. no two instances share a memory slot;
//! 3. compute slices add up to at most the GPU's budget;
//! 4. no profile exceeds its own instance maximum, and the GPU's instance maximum holds;
//! 5. at most one media-extended (`+me` or `+me.all`) instance;
//! 6. a `+me.all` instance takes every media engine: only `-me` instances may share the GPU.

use crate::catalog::GpuModel;
use crate::profile::ProfileName;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A GPU instance placed on a GPU: a profile (index into the model's profiles) and its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub profile: usize,
    pub start: u8,
}

/// A set of placed GPU instances on one GPU model.
pub type Layout = Vec<Instance>;

/// How many of each profile (parallel to the model's profile list).
pub type Counts = Vec<u32>;

/// The JSON/human form of a placed instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedInstance {
    pub profile: String,
    pub start: u8,
    pub size: u8,
}

/// Why a set of instances is not a valid layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    BadStart {
        profile: String,
        start: u8,
        allowed: Vec<u8>,
    },
    Overlap {
        a: PlacedInstance,
        b: PlacedInstance,
    },
    ComputeBudget {
        needed: u64,
        budget: u8,
        what: String,
    },
    MemorySlots {
        needed: u64,
        slots: u8,
        what: String,
    },
    ProfileMax {
        profile: String,
        count: u32,
        max: u8,
    },
    InstanceMax {
        count: u64,
        max: u8,
    },
    MediaExtended {
        profiles: Vec<String>,
    },
    MeAllExclusive {
        me_all: String,
        other: String,
    },
}

/// Formats counts the way people write them: `3g.40gb x3`, or `3g.40gb + 1g.10gb x2`.
pub fn describe_counts(gpu: &GpuModel, counts: &[u32]) -> String {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| {
        let p = &gpu.profiles[i];
        (std::cmp::Reverse(p.compute), std::cmp::Reverse(p.slots), i)
    });
    let mut parts = Vec::new();
    for i in order {
        match counts[i] {
            0 => {}
            1 => parts.push(gpu.profiles[i].name.clone()),
            n => parts.push(format!("{} x{n}", gpu.profiles[i].name)),
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" + ")
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BadStart {
                profile,
                start,
                allowed,
            } => {
                let a: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
                write!(
                    f,
                    "{profile} cannot start at memory slot {start}; allowed starts are {}",
                    a.join(",")
                )
            }
            Violation::Overlap { a, b } => write!(
                f,
                "{} at {}:{} overlaps {} at {}:{}",
                a.profile, a.start, a.size, b.profile, b.start, b.size
            ),
            Violation::ComputeBudget {
                needed,
                budget,
                what,
            } => write!(f, "{what} needs {needed} compute slices, {budget} available"),
            Violation::MemorySlots {
                needed,
                slots,
                what,
            } => write!(f, "{what} needs {needed} memory slots, {slots} available"),
            Violation::ProfileMax {
                profile,
                count,
                max,
            } => write!(
                f,
                "{profile} x{count} exceeds the limit of {max} {profile} instance{} per GPU",
                if *max == 1 { "" } else { "s" }
            ),
            Violation::InstanceMax { count, max } => write!(
                f,
                "{count} GPU instances exceed the limit of {max} per GPU"
            ),
            Violation::MediaExtended { profiles } => write!(
                f,
                "only one media-extended (+me / +me.all) instance fits on a GPU, got {}",
                profiles.join(", ")
            ),
            Violation::MeAllExclusive { me_all, other } => write!(
                f,
                "{me_all} takes every media engine; only -me profiles can share the GPU with it, not {other}"
            ),
        }
    }
}

/// Checks the count-level rules (3, 4, 5, 6 and the memory-slot total) for a multiset of
/// profiles, budgets first (they explain the most). These are necessary conditions; placement (rules 1–2) is checked by search.
pub fn check_counts(gpu: &GpuModel, counts: &[u32]) -> Result<(), Violation> {
    let what = || describe_counts(gpu, counts);
    // u64: counts come from user input and may be huge.
    let compute: u64 = counts
        .iter()
        .zip(&gpu.profiles)
        .map(|(&n, p)| n as u64 * p.compute as u64)
        .sum();
    if compute > gpu.compute_slices as u64 {
        return Err(Violation::ComputeBudget {
            needed: compute,
            budget: gpu.compute_slices,
            what: what(),
        });
    }
    let slots: u64 = counts
        .iter()
        .zip(&gpu.profiles)
        .map(|(&n, p)| n as u64 * p.slots as u64)
        .sum();
    if slots > gpu.memory_slots as u64 {
        return Err(Violation::MemorySlots {
            needed: slots,
            slots: gpu.memory_slots,
            what: what(),
        });
    }
    for (i, &n) in counts.iter().enumerate() {
        let p = &gpu.profiles[i];
        if n > p.max as u32 {
            return Err(Violation::ProfileMax {
                profile: p.name.clone(),
                count: n,
                max: p.max,
            });
        }
    }
    let total: u64 = counts.iter().map(|&n| n as u64).sum();
    if total > gpu.max_instances as u64 {
        return Err(Violation::InstanceMax {
            count: total,
            max: gpu.max_instances,
        });
    }
    let media: Vec<String> = counts
        .iter()
        .zip(&gpu.profiles)
        .filter(|(_, p)| p.attribute().is_media_extended())
        .flat_map(|(&n, p)| std::iter::repeat_n(p.name.clone(), n as usize))
        .collect();
    if media.len() > 1 {
        return Err(Violation::MediaExtended { profiles: media });
    }
    if let Some(me_all) = counts
        .iter()
        .zip(&gpu.profiles)
        .find(|(&n, p)| n > 0 && p.attribute() == crate::Attribute::MeAll)
        .map(|(_, p)| p)
    {
        if let Some(other) = counts.iter().zip(&gpu.profiles).find(|(&n, p)| {
            n > 0 && p.name != me_all.name && p.attribute() != crate::Attribute::NoMe
        }) {
            return Err(Violation::MeAllExclusive {
                me_all: me_all.name.clone(),
                other: other.1.name.clone(),
            });
        }
    }
    Ok(())
}

/// The placed form of an instance, with names.
pub fn placed(gpu: &GpuModel, inst: &Instance) -> PlacedInstance {
    let p = &gpu.profiles[inst.profile];
    PlacedInstance {
        profile: p.name.clone(),
        start: inst.start,
        size: p.slots,
    }
}

/// How many of each profile a layout holds.
pub fn counts_of(gpu: &GpuModel, layout: &[Instance]) -> Counts {
    let mut c = vec![0; gpu.profiles.len()];
    for i in layout {
        c[i.profile] += 1;
    }
    c
}

/// Checks every rule for a placed layout.
pub fn check(gpu: &GpuModel, layout: &[Instance]) -> Result<(), Violation> {
    let mut used: Vec<(u32, &Instance)> = Vec::with_capacity(layout.len());
    for inst in layout {
        let p = &gpu.profiles[inst.profile];
        if !p.starts.contains(&inst.start) {
            return Err(Violation::BadStart {
                profile: p.name.clone(),
                start: inst.start,
                allowed: p.starts.clone(),
            });
        }
        let mask = p.mask_at(inst.start);
        if let Some((_, other)) = used.iter().find(|(m, _)| m & mask != 0) {
            return Err(Violation::Overlap {
                a: placed(gpu, other),
                b: placed(gpu, inst),
            });
        }
        used.push((mask, inst));
    }
    check_counts(gpu, &counts_of(gpu, layout))
}

/// Why `fit` found no layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Infeasible {
    /// The already-placed instances break a rule themselves.
    Existing(Violation),
    /// A count-level rule fails, so no placement can exist.
    Rule(Violation),
    /// Every rule on counts holds, but the exhaustive search found no non-overlapping placement
    /// at allowed starts.
    NoPlacement {
        what: String,
        /// Partial placements the search tried: the size of the proof.
        explored: u64,
    },
}

impl fmt::Display for Infeasible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Infeasible::Existing(v) => write!(f, "the instances already placed are invalid: {v}"),
            Infeasible::Rule(v) => write!(f, "{v}"),
            Infeasible::NoPlacement { what, explored } => write!(
                f,
                "{what} cannot be placed without overlap at the allowed starts (exhaustive search, {explored} partial placements tried)"
            ),
        }
    }
}

/// Places `counts` more instances on a GPU that already holds `existing` (kept where they are).
/// Exact: returns a valid layout (existing instances first) whenever one exists, otherwise the
/// reason none does. Deterministic: the lowest starts win.
pub fn fit(gpu: &GpuModel, counts: &[u32], existing: &[Instance]) -> Result<Layout, Infeasible> {
    check(gpu, existing).map_err(Infeasible::Existing)?;
    let mut all = counts_of(gpu, existing);
    for (a, &c) in all.iter_mut().zip(counts) {
        *a += c;
    }
    check_counts(gpu, &all).map_err(Infeasible::Rule)?;

    // Most constrained first: bigger placements, then fewer allowed starts.
    let mut order: Vec<usize> = (0..gpu.profiles.len()).filter(|&i| counts[i] > 0).collect();
    order.sort_by_key(|&i| {
        let p = &gpu.profiles[i];
        (std::cmp::Reverse(p.slots), p.starts.len(), i)
    });
    let mut items: Vec<usize> = Vec::new();
    for &i in &order {
        items.extend(std::iter::repeat_n(i, counts[i] as usize));
    }
    let occupied = existing
        .iter()
        .fold(0u32, |m, i| m | gpu.profiles[i.profile].mask_at(i.start));
    let mut search = Search {
        gpu,
        items: &items,
        chosen: Vec::with_capacity(items.len()),
        explored: 0,
    };
    if search.place(0, occupied, 0) {
        let mut layout = existing.to_vec();
        layout.extend(
            items
                .iter()
                .zip(&search.chosen)
                .map(|(&profile, &start)| Instance { profile, start }),
        );
        debug_assert!(check(gpu, &layout).is_ok());
        Ok(layout)
    } else {
        Err(Infeasible::NoPlacement {
            what: describe_counts(gpu, counts),
            explored: search.explored,
        })
    }
}

struct Search<'a> {
    gpu: &'a GpuModel,
    items: &'a [usize],
    chosen: Vec<u8>,
    explored: u64,
}

impl Search<'_> {
    /// Places items[k..] given the occupied mask. `min_start_idx` breaks the symmetry between
    /// instances of the same profile: they take allowed starts in increasing order.
    fn place(&mut self, k: usize, occupied: u32, min_start_idx: usize) -> bool {
        if k == self.items.len() {
            return true;
        }
        let p = &self.gpu.profiles[self.items[k]];
        for (si, &start) in p.starts.iter().enumerate().skip(min_start_idx) {
            let mask = p.mask_at(start);
            if occupied & mask != 0 {
                continue;
            }
            self.explored += 1;
            self.chosen.push(start);
            let next_min = match self.items.get(k + 1) {
                Some(&n) if n == self.items[k] => si + 1,
                _ => 0,
            };
            if self.place(k + 1, occupied | mask, next_min) {
                return true;
            }
            self.chosen.pop();
        }
        false
    }
}

/// The starts at which one more instance of `profile` can go on a GPU holding `layout`.
pub fn free_starts(gpu: &GpuModel, layout: &[Instance], profile: usize) -> Vec<u8> {
    let mut with = layout.to_vec();
    with.push(Instance { profile, start: 0 });
    gpu.profiles[profile]
        .starts
        .iter()
        .copied()
        .filter(|&start| {
            with.last_mut().expect("pushed").start = start;
            check(gpu, &with).is_ok()
        })
        .collect()
}

/// Every valid placed layout of a GPU model, the empty one included, each sorted by start.
pub fn enumerate(gpu: &GpuModel) -> Vec<Layout> {
    let candidates: Vec<Instance> = gpu
        .profiles
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.starts
                .iter()
                .map(move |&start| Instance { profile: i, start })
        })
        .collect();
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut counts = vec![0u32; gpu.profiles.len()];
    enumerate_from(gpu, &candidates, 0, 0, &mut current, &mut counts, &mut out);
    for l in &mut out {
        l.sort_by_key(|i| (i.start, i.profile));
    }
    out
}

fn enumerate_from(
    gpu: &GpuModel,
    candidates: &[Instance],
    from: usize,
    occupied: u32,
    current: &mut Layout,
    counts: &mut Counts,
    out: &mut Vec<Layout>,
) {
    out.push(current.clone());
    for (k, c) in candidates.iter().enumerate().skip(from) {
        let mask = gpu.profiles[c.profile].mask_at(c.start);
        if occupied & mask != 0 {
            continue;
        }
        counts[c.profile] += 1;
        // Every count rule is monotone: once broken, adding more never mends it.
        if check_counts(gpu, counts).is_ok() {
            current.push(*c);
            enumerate_from(
                gpu,
                candidates,
                k + 1,
                occupied | mask,
                current,
                counts,
                out,
            );
            current.pop();
        }
        counts[c.profile] -= 1;
    }
}

/// The distinct profile combinations a GPU model can hold, with one placement each.
#[derive(Debug, Clone)]
pub struct Combination {
    pub counts: Counts,
    /// The placement `fit` chooses for it.
    pub layout: Layout,
    /// No profile can be added.
    pub maximal: bool,
    /// How many distinct placements realise it.
    pub placements: usize,
}

/// Every feasible profile combination of a model (the empty one excluded), largest first.
pub fn combinations(gpu: &GpuModel) -> Vec<Combination> {
    use std::collections::HashMap;
    let mut seen: HashMap<Counts, usize> = HashMap::new();
    for layout in enumerate(gpu) {
        if !layout.is_empty() {
            *seen.entry(counts_of(gpu, &layout)).or_default() += 1;
        }
    }
    let mut out: Vec<Combination> = seen
        .iter()
        .map(|(counts, &placements)| {
            let maximal = (0..gpu.profiles.len()).all(|p| {
                let mut more = counts.clone();
                more[p] += 1;
                !seen.contains_key(&more)
            });
            Combination {
                counts: counts.clone(),
                layout: fit(gpu, counts, &[]).expect("enumerated combinations fit"),
                maximal,
                placements,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let key = |c: &Combination| {
            let compute: u32 = c
                .counts
                .iter()
                .zip(&gpu.profiles)
                .map(|(n, p)| n * p.compute as u32)
                .sum();
            let slots: u32 = c
                .counts
                .iter()
                .zip(&gpu.profiles)
                .map(|(n, p)| n * p.slots as u32)
                .sum();
            (std::cmp::Reverse(compute), std::cmp::Reverse(slots))
        };
        key(a).cmp(&key(b)).then_with(|| b.counts.cmp(&a.counts))
    });
    out
}

/// A one-line picture of a layout on the slot grid: `[3g.40gb    |2g.20gb|1g|..]`.
pub fn draw(gpu: &GpuModel, layout: &[Instance], cell: usize) -> String {
    let slots = gpu.memory_slots as usize;
    let mut cells: Vec<String> = vec![format!("{:^w$}", "·", w = cell); slots];
    let mut sorted = layout.to_vec();
    sorted.sort_by_key(|i| i.start);
    let mut out = String::from("|");
    let mut slot = 0usize;
    for inst in &sorted {
        let p = &gpu.profiles[inst.profile];
        while slot < inst.start as usize {
            out.push_str(&cells[slot]);
            out.push('|');
            slot += 1;
        }
        let width = cell * p.slots as usize + (p.slots as usize - 1);
        // The full name, else without the memory size (`1g+me`), else cut.
        let short = ProfileName::parse(&p.name)
            .map(|n| format!("{}g{}", n.gi_slices, n.attribute.suffix()))
            .unwrap_or_default();
        let label: String = [p.name.clone(), short]
            .into_iter()
            .find(|l| !l.is_empty() && l.chars().count() <= width)
            .unwrap_or_else(|| p.name.chars().take(width).collect());
        out.push_str(&format!("{label:^width$}"));
        out.push('|');
        slot += p.slots as usize;
    }
    while slot < slots {
        out.push_str(&std::mem::take(&mut cells[slot]));
        out.push('|');
        slot += 1;
    }
    out
}
