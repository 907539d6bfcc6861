//! systemd's timestamps of this boot, read over D-Bus (zbus, blocking) the
//! way `systemd-analyze blame` / `time` read them: the manager's
//! `UserspaceTimestampMonotonic` / `FinishTimestampMonotonic`, the default
//! target (`GetDefaultTarget`) and every loaded unit's
//! `InactiveExitTimestampMonotonic` / `ActiveEnterTimestampMonotonic` /
//! `InactiveEnterTimestampMonotonic`.
//!
//! Nothing here fails the report: a PID 1 that is not systemd, or a bus that
//! does not answer, is told as such ([`Pid1`]).

use std::fs;
use std::path::Path;

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::OwnedObjectPath;

use serde::{Deserialize, Serialize};

/// One unit's activation, as systemd stamped it (µs of CLOCK_MONOTONIC, 0 =
/// never).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitTimes {
    pub unit: String,
    /// `InactiveExitTimestampMonotonic`: its start job began.
    pub inactive_exit_us: u64,
    /// `ActiveEnterTimestampMonotonic`: it became active.
    pub active_enter_us: u64,
    /// `InactiveEnterTimestampMonotonic`: it became inactive again (a oneshot without
    /// `RemainAfterExit=` never is active: its start ends here).
    #[serde(default)]
    pub inactive_enter_us: u64,
}

/// What systemd says about this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdTimes {
    /// The manager's `UserspaceTimestampMonotonic`.
    pub userspace_us: u64,
    /// The manager's `FinishTimestampMonotonic` (0: the boot has not finished).
    pub finish_us: u64,
    /// `GetDefaultTarget()`.
    pub default_target: String,
    /// The default target's `ActiveEnterTimestampMonotonic` (0: not reached).
    pub default_target_us: u64,
    pub units: Vec<UnitTimes>,
}

/// Who PID 1 is, and what it told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pid1 {
    Systemd(SystemdTimes),
    /// PID 1 is not systemd (its comm): the timeline keeps its own end.
    NotSystemd(String),
    /// PID 1 is systemd but its D-Bus answers could not be read (why).
    Unreadable(String),
}

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";

/// One row of `ListUnits()`: name, description, load state, active state,
/// sub state, followed unit, object path, job id, job type, job path.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// Who PID 1 of the system at `root` is; its D-Bus answers when it is
/// systemd and `root` is this system (`/`).
pub fn read(root: &Path) -> Pid1 {
    let comm = fs::read_to_string(root.join("proc/1/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if comm != "systemd" {
        return Pid1::NotSystemd(if comm.is_empty() { "?".into() } else { comm });
    }
    if root != Path::new("/") {
        return Pid1::Unreadable(format!(
            "PID 1 of {} is systemd, but its bus is only read on the running system",
            root.display()
        ));
    }
    match read_bus() {
        Ok(t) => Pid1::Systemd(t),
        Err(e) => Pid1::Unreadable(format!("systemd's D-Bus API did not answer: {e}")),
    }
}

fn read_bus() -> zbus::Result<SystemdTimes> {
    let conn = Connection::system()?;
    let manager = Proxy::new(&conn, DEST, MANAGER_PATH, MANAGER)?;
    let userspace_us: u64 = manager.get_property("UserspaceTimestampMonotonic")?;
    let finish_us: u64 = manager.get_property("FinishTimestampMonotonic")?;
    let default_target: String = manager.call("GetDefaultTarget", &())?;
    let rows: Vec<UnitRow> = manager.call("ListUnits", &())?;
    let mut units = Vec::with_capacity(rows.len());
    let mut default_target_us = 0;
    for (name, _, _, _, _, _, path, _, _, _) in rows {
        let unit = Proxy::new(&conn, DEST, path, UNIT)?;
        let active_enter_us: u64 = unit.get_property("ActiveEnterTimestampMonotonic")?;
        let inactive_exit_us: u64 = unit.get_property("InactiveExitTimestampMonotonic")?;
        let inactive_enter_us: u64 = unit.get_property("InactiveEnterTimestampMonotonic")?;
        if name == default_target {
            default_target_us = active_enter_us;
        }
        units.push(UnitTimes {
            unit: name,
            inactive_exit_us,
            active_enter_us,
            inactive_enter_us,
        });
    }
    Ok(SystemdTimes {
        userspace_us,
        finish_us,
        default_target,
        default_target_us,
        units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_1_that_is_not_systemd_is_named() {
        let dir = std::env::temp_dir().join(format!("fk-pid1-{}", std::process::id()));
        fs::create_dir_all(dir.join("proc/1")).unwrap();
        fs::write(dir.join("proc/1/comm"), "init\n").unwrap();
        assert_eq!(read(&dir), Pid1::NotSystemd("init".into()));
        fs::write(dir.join("proc/1/comm"), "systemd\n").unwrap();
        assert!(matches!(read(&dir), Pid1::Unreadable(w) if w.contains("running system")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
