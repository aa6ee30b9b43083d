//! The life of a service order.
//!
//! ```text
//! created ─match─▶ offered ─accept─▶ accepted ─depart─▶ en_route ─arrive─▶ arrived
//!    ▲               │ decline/timeout                                        │ complete
//!    └───────────────┘ (next provider)                                        ▼
//!                                    closed ◀─rate─ rated ◀─callback_done─ completed
//! any state before completed ─cancel─▶ cancelled
//! ```

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    Created,
    Offered,
    Accepted,
    EnRoute,
    Arrived,
    Completed,
    CalledBack,
    Rated,
    Closed,
    Cancelled,
}

/// What happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    /// Offered to the next matching provider.
    Offer,
    Accept,
    /// Declined, or the accept timeout passed: back to matching.
    Decline,
    Depart,
    Arrive,
    Complete,
    /// The operator's call-back to the senior is done.
    CallBack,
    /// The senior's rating from the tablet.
    Rate,
    Close,
    Cancel,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an order that is {state} cannot {event}")]
pub struct OrderTransitionError {
    pub state: OrderState,
    pub event: OrderEvent,
}

impl OrderState {
    pub const ALL: &'static [OrderState] = &[
        OrderState::Created,
        OrderState::Offered,
        OrderState::Accepted,
        OrderState::EnRoute,
        OrderState::Arrived,
        OrderState::Completed,
        OrderState::CalledBack,
        OrderState::Rated,
        OrderState::Closed,
        OrderState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Created => "created",
            OrderState::Offered => "offered",
            OrderState::Accepted => "accepted",
            OrderState::EnRoute => "en_route",
            OrderState::Arrived => "arrived",
            OrderState::Completed => "completed",
            OrderState::CalledBack => "called_back",
            OrderState::Rated => "rated",
            OrderState::Closed => "closed",
            OrderState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == raw)
    }

    /// Held by a provider: accepted and not yet completed.
    pub fn is_active_with_provider(self) -> bool {
        matches!(
            self,
            OrderState::Accepted | OrderState::EnRoute | OrderState::Arrived
        )
    }

    pub fn is_final(self) -> bool {
        matches!(self, OrderState::Closed | OrderState::Cancelled)
    }

    /// The one step `event` takes from here, or why it cannot.
    pub fn apply(self, event: OrderEvent) -> Result<OrderState, OrderTransitionError> {
        use OrderEvent as E;
        use OrderState as S;
        let next = match (self, event) {
            (S::Created, E::Offer) => S::Offered,
            (S::Offered, E::Accept) => S::Accepted,
            (S::Offered, E::Decline) => S::Created,
            (S::Accepted, E::Depart) => S::EnRoute,
            (S::EnRoute, E::Arrive) => S::Arrived,
            (S::Arrived, E::Complete) => S::Completed,
            (S::Completed, E::CallBack) => S::CalledBack,
            (S::CalledBack, E::Rate) => S::Rated,
            // A senior who does not rate: the order is closed after the call-back all the same.
            (S::CalledBack | S::Rated, E::Close) => S::Closed,
            (S::Created | S::Offered | S::Accepted | S::EnRoute | S::Arrived, E::Cancel) => {
                S::Cancelled
            }
            _ => return Err(OrderTransitionError { state: self, event }),
        };
        Ok(next)
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OrderEvent {
    /// The event's name in the event log (`order.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEvent::Offer => "offered",
            OrderEvent::Accept => "accepted",
            OrderEvent::Decline => "declined",
            OrderEvent::Depart => "en_route",
            OrderEvent::Arrive => "arrived",
            OrderEvent::Complete => "completed",
            OrderEvent::CallBack => "called_back",
            OrderEvent::Rate => "rated",
            OrderEvent::Close => "closed",
            OrderEvent::Cancel => "cancelled",
        }
    }
}

impl fmt::Display for OrderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            OrderEvent::Offer => "be offered",
            OrderEvent::Accept => "be accepted",
            OrderEvent::Decline => "be declined",
            OrderEvent::Depart => "go en route",
            OrderEvent::Arrive => "arrive",
            OrderEvent::Complete => "be completed",
            OrderEvent::CallBack => "be called back",
            OrderEvent::Rate => "be rated",
            OrderEvent::Close => "be closed",
            OrderEvent::Cancel => "be cancelled",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_closed_loop_runs_in_order() {
        let mut state = OrderState::Created;
        for event in [
            OrderEvent::Offer,
            OrderEvent::Decline,
            OrderEvent::Offer,
            OrderEvent::Accept,
            OrderEvent::Depart,
            OrderEvent::Arrive,
            OrderEvent::Complete,
            OrderEvent::CallBack,
            OrderEvent::Rate,
            OrderEvent::Close,
        ] {
            state = state.apply(event).unwrap();
        }
        assert_eq!(state, OrderState::Closed);
    }

    #[test]
    fn out_of_order_steps_are_refused_with_a_clear_reason() {
        let error = OrderState::Accepted
            .apply(OrderEvent::Complete)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "an order that is accepted cannot be completed"
        );
        assert!(
            OrderState::Completed.apply(OrderEvent::Cancel).is_err(),
            "a completed order is not cancelled"
        );
    }

    fn any_state() -> impl Strategy<Value = OrderState> {
        proptest::sample::select(OrderState::ALL.to_vec())
    }

    fn any_event() -> impl Strategy<Value = OrderEvent> {
        proptest::sample::select(vec![
            OrderEvent::Offer,
            OrderEvent::Accept,
            OrderEvent::Decline,
            OrderEvent::Depart,
            OrderEvent::Arrive,
            OrderEvent::Complete,
            OrderEvent::CallBack,
            OrderEvent::Rate,
            OrderEvent::Close,
            OrderEvent::Cancel,
        ])
    }

    proptest! {
        #[test]
        fn final_states_stay_final(state in any_state(), event in any_event()) {
            if state.is_final() {
                prop_assert!(state.apply(event).is_err());
            }
        }

        #[test]
        fn any_history_ends_in_a_known_state(events in proptest::collection::vec(any_event(), 0..40)) {
            let mut state = OrderState::Created;
            for event in events {
                if let Ok(next) = state.apply(event) {
                    prop_assert_ne!(next, state, "every accepted event moves the order");
                    state = next;
                }
            }
            prop_assert!(OrderState::ALL.contains(&state));
        }
    }
}
