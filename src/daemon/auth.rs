//! Who may change the host: the caller of the D-Bus message (its uid, from the bus
//! daemon), never the daemon's own identity.

use super::BusError;
use zbus::message::Header;

/// The uid of the message's sender.
pub async fn caller_uid(conn: &zbus::Connection, header: &Header<'_>) -> Result<u32, BusError> {
    let sender = header
        .sender()
        .ok_or_else(|| BusError::AccessDenied("message has no sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    dbus.get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| BusError::AccessDenied(format!("cannot identify caller: {e}")))
}

/// Root may mutate; so may members of `admin_group` when it is set.
pub fn may_mutate(uid: u32, admin_group: &str) -> bool {
    if uid == 0 {
        return true;
    }
    if admin_group.is_empty() {
        return false;
    }
    let Ok(Some(group)) = nix::unistd::Group::from_name(admin_group) else {
        return false;
    };
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return false;
    };
    user.gid == group.gid || group.mem.contains(&user.name)
}

pub async fn require_admin(
    conn: &zbus::Connection,
    header: &Header<'_>,
    admin_group: &str,
    what: &str,
) -> Result<u32, BusError> {
    let uid = caller_uid(conn, header).await?;
    if may_mutate(uid, admin_group) {
        Ok(uid)
    } else {
        Err(BusError::AccessDenied(format!(
            "uid {uid} may not {what}: only root{} may",
            if admin_group.is_empty() {
                String::new()
            } else {
                format!(" and members of {admin_group}")
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_and_others_only_through_the_group() {
        assert!(may_mutate(0, ""));
        assert!(!may_mutate(65534, ""));
        assert!(!may_mutate(65534, "no-such-group-here"));
    }
}
