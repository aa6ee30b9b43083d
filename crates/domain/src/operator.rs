//! An operator's availability and which changes of it the operator may ask for.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("unknown operator status '{0}'")]
    Unknown(String),
    #[error("an operator may only choose available or away, not {0}")]
    NotSelectable(OperatorStatus),
}

/// An operator's availability. `OnCall`, `WrapUp` and `Paused` are set by the system: when an
/// offer is accepted, when a call ends (for the configured wrap-up time), and after too many
/// offers in a row rang out unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorStatus {
    Offline,
    Available,
    Away,
    OnCall,
    WrapUp,
    Paused,
}

impl OperatorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorStatus::Offline => "offline",
            OperatorStatus::Available => "available",
            OperatorStatus::Away => "away",
            OperatorStatus::OnCall => "on_call",
            OperatorStatus::WrapUp => "wrap_up",
            OperatorStatus::Paused => "paused",
        }
    }

    /// Checks a status the operator asked for (the console's status switch).
    pub fn selectable(self) -> Result<Self, StatusError> {
        match self {
            OperatorStatus::Available | OperatorStatus::Away => Ok(self),
            other => Err(StatusError::NotSelectable(other)),
        }
    }
}

impl fmt::Display for OperatorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorStatus {
    type Err = StatusError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "offline" => Ok(OperatorStatus::Offline),
            "available" => Ok(OperatorStatus::Available),
            "away" => Ok(OperatorStatus::Away),
            "on_call" => Ok(OperatorStatus::OnCall),
            "wrap_up" => Ok(OperatorStatus::WrapUp),
            "paused" => Ok(OperatorStatus::Paused),
            other => Err(StatusError::Unknown(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_cannot_put_themselves_on_call() {
        assert_eq!(
            OperatorStatus::OnCall.selectable(),
            Err(StatusError::NotSelectable(OperatorStatus::OnCall))
        );
        assert_eq!(OperatorStatus::Away.selectable(), Ok(OperatorStatus::Away));
    }
}
