//! The routing decision core, as pure functions: given the waiting items and the free
//! operators at one instant (database time), which offers to make. The store calls [`plan`]
//! inside one transaction under a global matching lock and writes what it returns; the
//! property tests below drive it through random histories.

mod rules;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use rules::{Attributes, QueueRule, RuleError, RuleSet, Step, ValidRuleSet, DEFAULT_RULES};

/// What a queued item is; decides its base priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Emergency,
    Technical,
    Call,
    Callback,
}

impl ItemKind {
    pub const ALL: &'static [ItemKind] = &[
        ItemKind::Emergency,
        ItemKind::Technical,
        ItemKind::Call,
        ItemKind::Callback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Emergency => "emergency",
            ItemKind::Technical => "technical",
            ItemKind::Call => "call",
            ItemKind::Callback => "callback",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.as_str() == raw)
    }

    /// Emergency alarm > technical alarm > call > call-back. The gaps are wider than any aging
    /// an item can gain in a plausible wait (an hour at 10 points a minute is 600), so aging
    /// reorders items of one kind far sooner than it lets one kind overtake another.
    pub fn base_priority(self) -> i64 {
        match self {
            ItemKind::Emergency => 4000,
            ItemKind::Technical => 3000,
            ItemKind::Call => 2000,
            ItemKind::Callback => 1000,
        }
    }
}

/// An item waiting to be (or being) offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingItem {
    pub id: Uuid,
    pub kind: ItemKind,
    pub queue: String,
    /// Milliseconds since the item entered the queue, by the database clock.
    pub waited_ms: i64,
    /// Tie-break for first-in-first-out: when the item was created (database ms).
    pub created_ms: i64,
    pub attributes: Attributes,
    /// Operators currently ringing for this item.
    pub ringing: BTreeSet<Uuid>,
    /// How many times each operator has already been offered this item.
    pub offered_before: BTreeMap<Uuid, u32>,
}

/// An operator who could take an offer now (available, no live offer, capacity free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeOperator {
    pub id: Uuid,
    pub skills: BTreeSet<String>,
    /// When the operator last became available (database ms): smaller is idle longer.
    pub idle_since_ms: i64,
}

/// One offer to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedOffer {
    pub item: Uuid,
    pub operator: Uuid,
}

/// The priority an item has after waiting: base plus aging.
pub fn effective_priority(rules: &ValidRuleSet, item: &WaitingItem) -> i64 {
    let minutes = item.waited_ms.max(0) / 60_000;
    item.kind.base_priority() + minutes * i64::from(rules.rules().aging_points_per_minute)
}

/// Whether `operator` may take `item` now.
pub fn eligible(rules: &ValidRuleSet, item: &WaitingItem, operator: &FreeOperator) -> bool {
    let waited_secs = u64::try_from(item.waited_ms.max(0) / 1000).unwrap_or(0);
    rules
        .required_skills(&item.queue, waited_secs, &item.attributes)
        .iter()
        .all(|skill| operator.skills.contains(skill))
}

/// The items in the order they are served: highest effective priority first, then oldest.
pub fn service_order<'a>(rules: &ValidRuleSet, items: &'a [WaitingItem]) -> Vec<&'a WaitingItem> {
    let mut ordered: Vec<&WaitingItem> = items.iter().collect();
    ordered.sort_by(|a, b| {
        effective_priority(rules, b)
            .cmp(&effective_priority(rules, a))
            .then(a.created_ms.cmp(&b.created_ms))
            .then(a.id.cmp(&b.id))
    });
    ordered
}

/// Decides the offers to make now. Items are served in [`service_order`]; each free operator
/// gets at most one offer (one voice call at a time). A ring-all item is offered to every free
/// eligible operator; any other item, if nobody is ringing for it yet, to the eligible operator
/// offered it least often so far, then idle longest.
pub fn plan(
    rules: &ValidRuleSet,
    items: &[WaitingItem],
    operators: &[FreeOperator],
) -> Vec<PlannedOffer> {
    let mut free: BTreeMap<Uuid, &FreeOperator> = operators
        .iter()
        .map(|operator| (operator.id, operator))
        .collect();
    let mut offers = Vec::new();
    for item in service_order(rules, items) {
        let ring_all = rules.queue(&item.queue).is_some_and(|queue| queue.ring_all);
        if !ring_all && !item.ringing.is_empty() {
            continue;
        }
        let mut candidates: Vec<&FreeOperator> = free
            .values()
            .copied()
            .filter(|operator| {
                !item.ringing.contains(&operator.id) && eligible(rules, item, operator)
            })
            .collect();
        if candidates.is_empty() {
            continue;
        }
        if ring_all {
            for operator in candidates {
                free.remove(&operator.id);
                offers.push(PlannedOffer {
                    item: item.id,
                    operator: operator.id,
                });
            }
        } else {
            candidates.sort_by_key(|operator| {
                (
                    item.offered_before.get(&operator.id).copied().unwrap_or(0),
                    operator.idle_since_ms,
                    operator.id,
                )
            });
            let chosen = candidates[0].id;
            free.remove(&chosen);
            offers.push(PlannedOffer {
                item: item.id,
                operator: chosen,
            });
        }
    }
    offers
}

/// How often (seconds) supervisors are reminded of an item that has passed every widening and
/// its maximum wait.
pub const REALERT_SECS: u64 = 60;

/// The next moment, in seconds of waiting, when something must happen to a waiting item: its
/// requirements widen, or it reaches its queue's maximum wait (overflow or alert); past both,
/// a reminder every [`REALERT_SECS`]. Always later than `waited_secs`: no waiting item is ever
/// without a deadline.
pub fn next_deadline_secs(rules: &ValidRuleSet, queue: &str, waited_secs: u64) -> u64 {
    let widening = rules.next_widening(queue, waited_secs).map(u64::from);
    let max_wait = rules
        .queue(queue)
        .and_then(|queue| queue.max_wait_secs)
        .map(u64::from)
        .filter(|max_wait| *max_wait > waited_secs);
    [widening, max_wait]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(waited_secs + REALERT_SECS)
}

#[cfg(test)]
mod tests;
