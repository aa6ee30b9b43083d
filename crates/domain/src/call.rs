//! The life of a call and of the offers made for it.
//!
//! ```text
//! queued ──offer──▶ offered ──accept──▶ answered ──end──▶ ended
//!   ▲                  │
//!   └──expire/decline──┘        queued | offered ──cancel──▶ abandoned
//!   ▲                              │
//!   └─────── transfer ─────────────┘ (answered → queued, or → offered to a named operator)
//! ```

use std::fmt;
use std::str::FromStr;

/// Why a transition was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("a call cannot go from {from} to {to}")]
    Illegal { from: CallState, to: CallState },
    #[error("unknown {what} '{value}'")]
    Unknown { what: &'static str, value: String },
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the database and shown in logs.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = TransitionError;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(TransitionError::Unknown { what: $what, value: value.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// Where a call stands.
    CallState, "call state" {
        Queued => "queued",
        Offered => "offered",
        Answered => "answered",
        Ended => "ended",
        Abandoned => "abandoned",
        Cleared => "cleared",
    }
);

string_enum!(
    /// How an operator closed a call.
    Disposition, "disposition" {
        AccidentalPress => "accidental_press",
        Companionship => "companionship",
        Information => "information",
        ServiceRequest => "service_request",
        HealthConcern => "health_concern",
        Emergency => "emergency",
    }
);

string_enum!(
    /// What an operator did while handling an alarm.
    AlarmAction, "alarm action" {
        CalledSenior => "called_senior",
        Called120 => "called_120",
        NotifiedFamily => "notified_family",
        SentResponder => "sent_responder",
    }
);

string_enum!(
    /// How an alarm ended.
    AlarmOutcome, "alarm outcome" {
        FalseAlarm => "false_alarm",
        ResolvedByPhone => "resolved_by_phone",
        ResponderVisited => "responder_visited",
        Ambulance => "ambulance",
        Hospital => "hospital",
    }
);

string_enum!(
    /// Where one offer of a call to one operator stands.
    OfferState, "offer state" {
        Offered => "offered",
        Accepted => "accepted",
        Expired => "expired",
        Withdrawn => "withdrawn",
        Transferred => "transferred",
    }
);

impl CallState {
    /// Whether the call has finished and nothing more can happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CallState::Ended | CallState::Abandoned | CallState::Cleared
        )
    }

    /// Checks one step of the call's life; the store applies only steps this allows.
    pub fn transition(self, to: CallState) -> Result<CallState, TransitionError> {
        use CallState::*;
        let allowed = matches!(
            (self, to),
            (Queued, Offered)
                | (Offered, Queued)
                | (Offered, Answered)
                | (Answered, Ended)
                | (Answered, Queued)
                | (Answered, Offered)
                | (Queued, Abandoned)
                | (Offered, Abandoned)
                | (Queued, Cleared)
                | (Offered, Cleared)
        );
        if allowed {
            Ok(to)
        } else {
            Err(TransitionError::Illegal { from: self, to })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_answered_call_cannot_be_abandoned() {
        assert_eq!(
            CallState::Answered.transition(CallState::Abandoned),
            Err(TransitionError::Illegal {
                from: CallState::Answered,
                to: CallState::Abandoned
            })
        );
    }

    #[test]
    fn the_happy_path_is_allowed() {
        let state = CallState::Queued
            .transition(CallState::Offered)
            .and_then(|s| s.transition(CallState::Answered))
            .and_then(|s| s.transition(CallState::Ended));
        assert_eq!(state, Ok(CallState::Ended));
    }

    #[test]
    fn names_round_trip() {
        for disposition in Disposition::ALL {
            assert_eq!(
                disposition.as_str().parse::<Disposition>(),
                Ok(*disposition)
            );
        }
        assert!("bogus".parse::<Disposition>().is_err());
    }

    fn any_state() -> impl Strategy<Value = CallState> {
        proptest::sample::select(CallState::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn final_states_have_no_way_out(from in any_state(), to in any_state()) {
            if from.is_final() {
                prop_assert!(from.transition(to).is_err());
            }
        }
    }
}
