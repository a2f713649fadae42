//! GPU lists as people write them: `2xH100-80GB`, `2 x H100-80GB`, `A100-40GB,2xH100-80GB`. One
//! parser and one limit for every reader (the simulated node's spec, `carve validate --node`,
//! the tenancy file's `gpus:` lists).

use crate::catalog::{Catalog, GpuModel, LookupError};

/// Most GPUs on one node, however they are written. The largest nodes carry 8 to 16 GPUs; the
/// limit is generous and only keeps a typo (`80000xH100-80GB`) from allocating without end.
pub const MAX_GPUS_PER_NODE: u32 = 1024;

/// An `N x NAME` entry whose count is not a whole number from 1 to [`MAX_GPUS_PER_NODE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{entry}': the GPU count must be 1 to {MAX_GPUS_PER_NODE}")]
pub struct CountError {
    /// The entry as written (trimmed).
    pub entry: String,
}

/// Splits one entry: `N x NAME`, `NxNAME`, `NXNAME` (count `N`) or `NAME` (count 1). Whitespace
/// around the count and the name is ignored. Only a run of digits before the first `x` is a
/// count, so names with an `x` in them (`RTX-PRO-6000`) are names.
pub fn split_count(entry: &str) -> Result<(u32, &str), CountError> {
    let t = entry.trim();
    if let Some(i) = t.find(['x', 'X']) {
        let (n, rest) = t.split_at(i);
        let n = n.trim();
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return match n.parse::<u32>() {
                Ok(c) if (1..=MAX_GPUS_PER_NODE).contains(&c) => Ok((c, rest[1..].trim())),
                _ => Err(CountError {
                    entry: t.to_string(),
                }),
            };
        }
    }
    Ok((1, t))
}

/// A GPU list that does not describe a node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuListError {
    #[error(transparent)]
    Count(#[from] CountError),
    /// More than [`MAX_GPUS_PER_NODE`] GPUs in all.
    #[error("more than {MAX_GPUS_PER_NODE} GPUs on one node")]
    TooMany,
    /// A name that is no catalog GPU (with its "did you mean").
    #[error(transparent)]
    Unknown(#[from] LookupError),
    #[error("no GPUs given (e.g. 2xH100-80GB)")]
    Empty,
}

impl Catalog {
    /// The GPUs of a node, by index, from a comma-separated list of `N x NAME` entries (empty
    /// entries are skipped): `A100-40GB,2xH100-80GB` is GPU 0 an A100, GPUs 1 and 2 H100s.
    pub fn gpu_list(&self, spec: &str) -> Result<Vec<&GpuModel>, GpuListError> {
        let mut out: Vec<&GpuModel> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, name) = split_count(part)?;
            if out.len() + n as usize > MAX_GPUS_PER_NODE as usize {
                return Err(GpuListError::TooMany);
            }
            let g = self.gpu(name)?;
            out.extend(std::iter::repeat_n(g, n as usize));
        }
        if out.is_empty() {
            return Err(GpuListError::Empty);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(split_count("2xH100-80GB"), Ok((2, "H100-80GB")));
        assert_eq!(split_count(" 2 x H100-80GB "), Ok((2, "H100-80GB")));
        assert_eq!(split_count("3XA30-24GB"), Ok((3, "A30-24GB")));
        assert_eq!(split_count("RTX-PRO-6000"), Ok((1, "RTX-PRO-6000")));
        assert_eq!(split_count("H100-80GB"), Ok((1, "H100-80GB")));
        assert!(split_count("0xH100-80GB").is_err());
        assert!(split_count("1025xH100-80GB").is_err());
        assert!(split_count("99999999999999999999999xH100-80GB").is_err());
        assert_eq!(split_count("1024xH100-80GB"), Ok((1024, "H100-80GB")));
    }

    #[test]
    fn lists() {
        let c = Catalog::embedded();
        let l = c.gpu_list("A100-40GB, 2xH100-80GB,").unwrap();
        let keys: Vec<&str> = l.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["A100-40GB", "H100-80GB", "H100-80GB"]);
        assert_eq!(c.gpu_list(" , "), Err(GpuListError::Empty));
        assert_eq!(
            c.gpu_list("1000xH100-80GB,25xH100-80GB"),
            Err(GpuListError::TooMany)
        );
        let e = c.gpu_list("2xH100-8OGB").unwrap_err();
        assert!(e.to_string().contains("did you mean 'H100-80GB'"), "{e}");
        let e = c.gpu_list("0xH100-80GB").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'0xH100-80GB': the GPU count must be 1 to 1024"
        );
    }
}
