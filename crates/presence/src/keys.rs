//! The Redis key schema, in one place: `{prefix}presence:{kind}:{id}` holds the node id.

use crate::Kind;

#[derive(Debug, Clone)]
pub struct KeySchema {
    prefix: String,
}

impl KeySchema {
    /// `prefix` separates deployments (and tests) sharing one Redis, e.g. `carebell:`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn presence(&self, kind: Kind, id: &str) -> String {
        let kind = match kind {
            Kind::Device => "device",
            Kind::Operator => "operator",
        };
        format!("{}presence:{kind}:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_typed() {
        let keys = KeySchema::new("t1:");
        assert_eq!(
            keys.presence(Kind::Device, "tab-9"),
            "t1:presence:device:tab-9"
        );
        assert_ne!(
            keys.presence(Kind::Device, "x"),
            keys.presence(Kind::Operator, "x")
        );
    }
}
