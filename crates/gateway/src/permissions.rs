//! Who may call what: the permission table for every RPC of the console, family and provider
//! APIs. The browser pages reach data only through these RPCs (`web.rs` bridges them; the
//! pages' static files are public), and devices use their own API (`DeviceLink`, where a proved
//! key is the only permission). The services enforce the table where they authenticate each
//! call; `tests/e2e/permissions.rs` calls every RPC as every role and checks each answer against
//! this table, and checks that every RPC in `proto/` is in it.
//!
//! The administrator is not a role of these APIs: administration is `carebell admin`, run by
//! someone with access to the database, and every command it runs is written to the audit log
//! as `admin:cli`. Provider staff act through their provider's account.

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// No token.
    Anonymous,
    /// A signed-in operator.
    Operator,
    /// An operator with the `supervisor` skill.
    Supervisor,
    /// A signed-in family member (sees only their own relatives: checked per resident).
    Family,
    /// A signed-in provider account (sees only its own orders and staff: checked per order).
    Provider,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Anonymous,
        Role::Operator,
        Role::Supervisor,
        Role::Family,
        Role::Provider,
    ];
}

/// One RPC and the roles that may call it.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    /// `package.Service/Method`, as in the gRPC path.
    pub rpc: &'static str,
    pub roles: &'static [Role],
}

use Role::{Anonymous, Family, Operator, Provider, Supervisor};

const EVERYONE: &[Role] = &[Anonymous, Operator, Supervisor, Family, Provider];
const STAFF: &[Role] = &[Operator, Supervisor];
const SUPERVISORS: &[Role] = &[Supervisor];
const FAMILY: &[Role] = &[Family];
const PROVIDERS: &[Role] = &[Provider];

macro_rules! table {
    ($($rpc:literal => $roles:expr),* $(,)?) => {
        &[$(Permission { rpc: $rpc, roles: $roles }),*]
    };
}

/// The table. Sign-in is open to everyone (it is how a role is obtained).
pub const PERMISSIONS: &[Permission] = table! {
    "carebell.console.v1.Console/SignIn" => EVERYONE,
    "carebell.console.v1.Console/SetStatus" => STAFF,
    "carebell.console.v1.Console/Subscribe" => STAFF,
    "carebell.console.v1.Console/Accept" => STAFF,
    "carebell.console.v1.Console/EndCall" => STAFF,
    "carebell.console.v1.Console/GetResident" => STAFF,
    "carebell.console.v1.Console/Decline" => STAFF,
    "carebell.console.v1.Console/Transfer" => STAFF,
    "carebell.console.v1.Console/RecordAlarmAction" => STAFF,
    "carebell.console.v1.Console/ResolveAlarm" => STAFF,
    "carebell.console.v1.Console/FailedDeliveries" => STAFF,
    "carebell.console.v1.Console/ReclaimCall" => SUPERVISORS,
    "carebell.console.v1.Console/QueueStatus" => SUPERVISORS,
    "carebell.console.v1.Console/WatchQueues" => SUPERVISORS,
    "carebell.console.v1.Console/Statistics" => SUPERVISORS,
    "carebell.console.v1.Console/SuggestProviders" => STAFF,
    "carebell.console.v1.Console/CreateOrder" => STAFF,
    "carebell.console.v1.Console/CancelOrder" => STAFF,
    "carebell.console.v1.Console/RecordOrderCallBack" => STAFF,
    "carebell.console.v1.Console/ListOrders" => STAFF,
    "carebell.console.v1.Console/ReinstateProvider" => SUPERVISORS,
    "carebell.console.v1.Console/ServiceReport" => SUPERVISORS,
    "carebell.console.v1.Console/Catalogue" => STAFF,
    "carebell.console.v1.Console/FamilyCascade" => STAFF,
    "carebell.console.v1.Console/SendRtcSignal" => STAFF,
    "carebell.family.v1.Family/SignIn" => EVERYONE,
    "carebell.family.v1.Family/Alerts" => FAMILY,
    "carebell.family.v1.Family/Acknowledge" => FAMILY,
    "carebell.family.v1.Family/History" => FAMILY,
    "carebell.family.v1.Family/Relatives" => FAMILY,
    "carebell.family.v1.Family/Relative" => FAMILY,
    "carebell.family.v1.Family/SendMessage" => FAMILY,
    "carebell.provider.v1.Provider/SignIn" => EVERYONE,
    "carebell.provider.v1.Provider/Feed" => PROVIDERS,
    "carebell.provider.v1.Provider/ListOrders" => PROVIDERS,
    "carebell.provider.v1.Provider/Accept" => PROVIDERS,
    "carebell.provider.v1.Provider/Decline" => PROVIDERS,
    "carebell.provider.v1.Provider/AssignStaff" => PROVIDERS,
    "carebell.provider.v1.Provider/UpdateStatus" => PROVIDERS,
    "carebell.provider.v1.Provider/ListStaff" => PROVIDERS,
    "carebell.provider.v1.Provider/Figures" => PROVIDERS,
};

/// The browser pages (`web.rs`): static shells (HTML, script, styles) open to every role. They
/// hold no data: what a page shows comes only through the RPCs above, with the signed-in
/// role's token. `tests/e2e/permissions.rs` fetches each page as each role and checks that.
pub const PAGES: &[(&str, &[Role])] = &[
    ("/console", EVERYONE),
    ("/family", EVERYONE),
    ("/provider", EVERYONE),
    ("/tablet", EVERYONE),
];

/// Whether `role` may call `rpc` (`package.Service/Method`); an RPC not in the table is
/// allowed to nobody.
pub fn allowed(rpc: &str, role: Role) -> bool {
    PERMISSIONS
        .iter()
        .find(|permission| permission.rpc == rpc)
        .is_some_and(|permission| permission.roles.contains(&role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_listed_once_and_sign_in_is_the_only_open_door() {
        let mut seen = std::collections::HashSet::new();
        for permission in PERMISSIONS {
            assert!(seen.insert(permission.rpc), "{} twice", permission.rpc);
            let open = permission.roles.contains(&Role::Anonymous);
            assert_eq!(
                open,
                permission.rpc.ends_with("/SignIn"),
                "{}",
                permission.rpc
            );
        }
        assert!(!allowed(
            "carebell.console.v1.Console/NoSuchCall",
            Role::Supervisor
        ));
        assert!(allowed(
            "carebell.console.v1.Console/Accept",
            Role::Operator
        ));
        assert!(!allowed(
            "carebell.console.v1.Console/Statistics",
            Role::Operator
        ));
        assert!(!allowed(
            "carebell.family.v1.Family/Relatives",
            Role::Provider
        ));
    }
}
