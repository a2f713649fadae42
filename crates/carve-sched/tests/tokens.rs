//! Tenant tokens: made when missing (owner-only, or readable where mounted into containers) in an
//! owner-only directory, the same ones next time, and a schedule's tenants
//! recognised by them.

use carve_sched::tokens::{self, Readers};
use carve_timeslice::{Schedule, ScheduledTenant, Settings};
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_schedules_tenants_get_owner_only_tokens_that_last() {
    let dir = std::env::temp_dir().join(format!("carve-sched-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let schedule = Schedule {
        settings: Settings::default(),
        tenants: ["search", "note books"]
            .iter()
            .map(|n| ScheduledTenant {
                name: n.to_string(),
                share: None,
                memory_limit_bytes: Some(1 << 30),
            })
            .collect(),
    };
    let c = tokens::identities(schedule.clone(), &dir, Readers::Owner).unwrap();
    c.validate().unwrap();
    assert_eq!(c.schedule(), schedule);
    for t in &c.tenants {
        let f = tokens::token_path(&dir, &t.tenant.name);
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
        let on_disk = std::fs::read_to_string(&f).unwrap();
        assert_eq!(t.identity.token.as_deref(), Some(on_disk.trim()));
        assert!(on_disk.trim().len() >= 32);
    }
    // A name that is not file-safe gets a file-safe file.
    assert!(dir.join("note_books").is_file());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The same tokens next time; different tenants, different tokens.
    let again = tokens::identities(schedule.clone(), &dir, Readers::Owner).unwrap();
    assert_eq!(again.tenants[0].identity, c.tenants[0].identity);
    assert_ne!(c.tenants[0].identity.token, c.tenants[1].identity.token);
    // A directory that cannot be made is an error naming it.
    let e = tokens::token_for(
        std::path::Path::new("/proc/carve-no/such"),
        "t",
        Readers::Owner,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/proc/carve-no/such"), "{e}");
    // Tokens handed to containers by bind mounts: the same tokens, readable by whatever user
    // the pod runs as, still in the owner-only directory.
    let mounted = tokens::identities(schedule, &dir, Readers::Mounted).unwrap();
    assert_eq!(mounted.tenants[0].identity, c.tenants[0].identity);
    for t in &mounted.tenants {
        let f = tokens::token_path(&dir, &t.tenant.name);
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
    // A directory opened up by someone is closed again.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    tokens::token_for(&dir, "search", Readers::Mounted).unwrap();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // A directory of another user is refused, naming it.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = tokens::token_for(&dir, "search", Readers::Mounted)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("65534"),
            "{e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
