//! Identifiers that come from outside (devices, people) and are parsed once at the edge.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} may contain only ASCII letters, digits, '-', '_' and '.'")]
    BadCharacter { what: &'static str },
}

fn parse_token(what: &'static str, raw: &str, max: usize) -> Result<String, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { what });
    }
    if raw.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(IdError::BadCharacter { what });
    }
    Ok(raw.to_owned())
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, IdError> {
                parse_token($what, raw, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_type!(
    /// A device's identifier, assigned at provisioning (`tab-` followed by hex, by convention).
    DeviceId,
    "device id",
    64
);
token_type!(
    /// A device-chosen identifier of one call request; the idempotency key of the request.
    RequestId,
    "request id",
    64
);
token_type!(
    /// An operator's sign-in name.
    Username,
    "username",
    64
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn device_ids_refuse_sql_and_spaces() {
        assert_eq!(
            DeviceId::parse("x'; DROP TABLE devices; --"),
            Err(IdError::BadCharacter { what: "device id" })
        );
        assert_eq!(
            DeviceId::parse(""),
            Err(IdError::Empty { what: "device id" })
        );
        assert!(DeviceId::parse("tab-0a1b2c").is_ok());
    }

    proptest! {
        #[test]
        fn parsed_ids_round_trip(raw in "[A-Za-z0-9_.-]{1,64}") {
            let parsed = RequestId::parse(&raw).unwrap();
            prop_assert_eq!(parsed.as_str(), raw.as_str());
        }

        #[test]
        fn overlong_ids_are_refused(raw in "[a-z]{65,80}") {
            let refused = matches!(RequestId::parse(&raw), Err(IdError::TooLong { .. }));
            prop_assert!(refused);
        }
    }
}
