//! Who is on the other end of a connection: the kernel's word (peer credentials: pid, uid; the
//! pid's cgroup), never the client's. A tenant's claim is accepted when its token matches or its
//! peer credentials match the tenant's configuration. A refused client learns nothing about the
//! tenants there are: not whether the name it claimed exists, nor any other name
//! ([`AuthError::for_client`]).

use crate::config::{Identity, TenantConfig};
use std::os::fd::AsRawFd;

/// The peer of a unix socket, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer credentials of a connected unix socket.
pub fn peer(stream: &impl AsRawFd) -> std::io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERCRED) fills a ucred of the given length.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The cgroup paths of a process (`/proc/PID/cgroup`, every hierarchy).
pub fn cgroups(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The pid namespace of a process (`/proc/PID/ns/pid`'s target), when it can be read.
fn pid_namespace(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Whether the peer is the node's operator: the daemon's own user or root, in the daemon's own
/// pid namespace. Root in a container (its own pid namespace) is a tenant, not the operator.
pub fn is_operator(peer: Peer) -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    let own = unsafe { libc::getuid() };
    if peer.uid != own && peer.uid != 0 {
        return false;
    }
    match (pid_namespace("self"), pid_namespace(&peer.pid.to_string())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Equal, in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a client with these credentials (and this token) may act as the tenant.
pub fn admits(id: &Identity, peer: Peer, token: Option<&str>, cgroups: &[String]) -> bool {
    if let (Some(want), Some(got)) = (&id.token, token) {
        if same_secret(want, got) {
            return true;
        }
    }
    if id.uids.contains(&peer.uid) {
        return true;
    }
    if let Some(prefix) = &id.cgroup {
        let prefix = prefix.trim_end_matches('/');
        if cgroups.iter().any(|c| {
            c == prefix || (c.starts_with(prefix) && c.as_bytes().get(prefix.len()) == Some(&b'/'))
        }) {
            return true;
        }
    }
    false
}

/// Why a client's claim to be a tenant is refused. The text (`Display`) is for the operator
/// (logs, tests); the refused client is told [`AuthError::for_client`], which is the same for
/// both, so that a client cannot learn which tenant names exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No tenant of that name; `suggestion` is a close name.
    #[error("unknown tenant '{claim}'{}", suggestion.as_ref().map(|s| format!("; did you mean '{s}'?")).unwrap_or_default())]
    UnknownTenant {
        claim: String,
        suggestion: Option<String>,
    },
    /// The tenant exists, but neither the token nor the peer's user or cgroup proves the claim.
    #[error("process {pid} (uid {uid}) is not recognised as tenant '{tenant}': no matching token, user or cgroup")]
    NotRecognised { tenant: String, pid: u32, uid: u32 },
}

impl AuthError {
    /// What the refused client is told: its own claim and credentials, and no tenant name it did
    /// not send. Unknown names and unproven claims read alike.
    pub fn for_client(&self, peer: Peer) -> String {
        let claim = match self {
            AuthError::UnknownTenant { claim, .. } => claim,
            AuthError::NotRecognised { tenant, .. } => tenant,
        };
        format!(
            "process {} (uid {}) is not recognised as tenant '{claim}': no such tenant, or no \
             matching token, user or cgroup",
            peer.pid, peer.uid
        )
    }
}

/// Finds the tenant a client claims and checks the claim. The error says why, for the operator.
pub fn authenticate<'a>(
    tenants: &'a [TenantConfig],
    claim: &str,
    token: Option<&str>,
    peer: Peer,
) -> Result<&'a TenantConfig, AuthError> {
    let Some(t) = tenants.iter().find(|t| t.tenant.name == claim) else {
        let suggestion = tenants
            .iter()
            .map(|t| &t.tenant.name)
            .find(|n| strsim_like(claim, n))
            .cloned();
        return Err(AuthError::UnknownTenant {
            claim: claim.to_string(),
            suggestion,
        });
    };
    let groups = cgroups(peer.pid);
    if admits(&t.identity, peer, token, &groups) {
        Ok(t)
    } else {
        Err(AuthError::NotRecognised {
            tenant: claim.to_string(),
            pid: peer.pid,
            uid: peer.uid,
        })
    }
}

/// A cheap closeness test for suggestions (shared prefix or one edit apart).
fn strsim_like(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a.len() >= 3 && (b.starts_with(&a[..3]) || a.starts_with(&b[..b.len().min(3)])) {
        return true;
    }
    let (x, y): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if x.len().abs_diff(y.len()) > 1 {
        return false;
    }
    let mut prev: Vec<usize> = (0..=y.len()).collect();
    for i in 1..=x.len() {
        let mut cur = vec![i; y.len() + 1];
        for j in 1..=y.len() {
            let sub = prev[j - 1] + usize::from(x[i - 1] != y[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[y.len()] <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(token: Option<&str>, uids: &[u32], cgroup: Option<&str>) -> Identity {
        Identity {
            token: token.map(str::to_string),
            uids: uids.to_vec(),
            cgroup: cgroup.map(str::to_string),
        }
    }

    const P: Peer = Peer {
        pid: 1,
        uid: 1000,
        gid: 1000,
    };

    #[test]
    fn tokens_users_and_cgroups() {
        let tok = "0123456789abcdef0123";
        assert!(admits(&id(Some(tok), &[], None), P, Some(tok), &[]));
        assert!(!admits(
            &id(Some(tok), &[], None),
            P,
            Some("0123456789abcdef0124"),
            &[]
        ));
        assert!(!admits(&id(Some(tok), &[], None), P, None, &[]));
        assert!(admits(&id(None, &[1000], None), P, None, &[]));
        assert!(!admits(&id(None, &[0], None), P, None, &[]));
        let g = vec!["/kubepods/pod1/ctr".to_string()];
        assert!(admits(&id(None, &[], Some("/kubepods/pod1")), P, None, &g));
        assert!(admits(&id(None, &[], Some("/kubepods/pod1/")), P, None, &g));
        assert!(!admits(&id(None, &[], Some("/kubepods/pod")), P, None, &g));
    }

    #[test]
    fn the_operator_is_the_own_user_in_the_own_pid_namespace() {
        // SAFETY: getuid/getpid have no preconditions.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid() as u32) };
        let me = Peer { pid, uid, gid: 0 };
        assert!(is_operator(me));
        // Another user (not root) is not, nor a process that is not there.
        if uid != 12345 {
            assert!(!is_operator(Peer { uid: 12345, ..me }));
        }
        assert!(!is_operator(Peer {
            pid: u32::MAX,
            ..me
        }));
    }

    #[test]
    fn unknown_tenants_get_a_suggestion_for_the_operator_only() {
        let t = vec![TenantConfig {
            tenant: carve_timeslice::ScheduledTenant {
                name: "search".into(),
                share: None,
                memory_limit_bytes: None,
            },
            identity: id(None, &[1000], None),
        }];
        let e = authenticate(&t, "serch", None, P).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown tenant 'serch'; did you mean 'search'?"
        );
        assert!(
            matches!(e, AuthError::UnknownTenant { ref suggestion, .. } if suggestion.as_deref() == Some("search")),
            "{e:?}"
        );
        let e = authenticate(&t, "zzz", None, P).unwrap_err();
        assert_eq!(e.to_string(), "unknown tenant 'zzz'");
        // The client hears the same for an unknown name and an unproven claim, and no name it
        // did not send.
        let told = e.for_client(P);
        assert_eq!(
            told,
            "process 1 (uid 1000) is not recognised as tenant 'zzz': no such tenant, or no \
             matching token, user or cgroup"
        );
        let serch = authenticate(&t, "serch", None, P)
            .unwrap_err()
            .for_client(P);
        assert!(!serch.contains("search"), "{serch}");
        assert!(authenticate(&t, "search", None, P).is_ok());
        let e = authenticate(&t, "search", None, Peer { uid: 7, ..P }).unwrap_err();
        assert_eq!(
            e,
            AuthError::NotRecognised {
                tenant: "search".into(),
                pid: 1,
                uid: 7
            }
        );
        assert_eq!(
            e.to_string(),
            "process 1 (uid 7) is not recognised as tenant 'search': no matching token, user or cgroup"
        );
        let p7 = Peer { uid: 7, ..P };
        assert_eq!(
            e.for_client(p7),
            AuthError::UnknownTenant {
                claim: "search".into(),
                suggestion: None
            }
            .for_client(p7)
        );
    }
}
