//! Property tests of the decision core over random histories of arrivals, accepts, rejects,
//! timeouts, disconnects and status changes, applied to a small in-memory model of the
//! engine's state (the store keeps the same state in PostgreSQL).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Arrive { kind: u8, dialect: u8 },
    Accept(u8),
    Reject(u8),
    Timeout(u8),
    Disconnect(u8),
    Available(u8),
    Away(u8),
    End(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 0u8..3).prop_map(|(kind, dialect)| Op::Arrive { kind, dialect }),
        3 => any::<u8>().prop_map(Op::Accept),
        1 => any::<u8>().prop_map(Op::Reject),
        2 => any::<u8>().prop_map(Op::Timeout),
        1 => any::<u8>().prop_map(Op::Disconnect),
        2 => any::<u8>().prop_map(Op::Available),
        1 => any::<u8>().prop_map(Op::Away),
        2 => any::<u8>().prop_map(Op::End),
        2 => (1u16..30_000).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Available,
    Away,
    Offline,
    Paused,
    OnCall(Uuid),
}

#[derive(Debug, Clone)]
struct SimOperator {
    skills: BTreeSet<String>,
    status: Status,
    idle_since_ms: i64,
    ringing: Option<Uuid>,
    misses: u32,
}

#[derive(Debug, Clone)]
struct SimItem {
    item: WaitingItem,
    created_at: i64,
    held_by: Option<Uuid>,
    done: bool,
}

struct Model {
    rules: ValidRuleSet,
    now: i64,
    operators: BTreeMap<Uuid, SimOperator>,
    items: BTreeMap<Uuid, SimItem>,
    next_id: u128,
}

const DIALECTS: [&str; 3] = ["cantonese", "hakka", "teochew"];

impl Model {
    fn new() -> Self {
        let mut model = Model {
            rules: ValidRuleSet::default_rules(),
            now: 1_000_000,
            operators: BTreeMap::new(),
            items: BTreeMap::new(),
            next_id: 1,
        };
        for (index, skills) in [
            vec!["dialect:cantonese"],
            vec!["dialect:hakka", "nurse"],
            vec![],
            vec!["dialect:teochew", "dialect:cantonese"],
        ]
        .into_iter()
        .enumerate()
        {
            model.operators.insert(
                Uuid::from_u128(1000 + index as u128),
                SimOperator {
                    skills: skills.into_iter().map(str::to_owned).collect(),
                    status: Status::Available,
                    idle_since_ms: model.now - index as i64,
                    ringing: None,
                    misses: 0,
                },
            );
        }
        model
    }

    fn operator_at(&self, index: u8) -> Uuid {
        let ids: Vec<Uuid> = self.operators.keys().copied().collect();
        ids[usize::from(index) % ids.len()]
    }

    fn withdraw_offers_for(&mut self, item: Uuid) {
        for operator in self.operators.values_mut() {
            if operator.ringing == Some(item) {
                operator.ringing = None;
            }
        }
        if let Some(sim) = self.items.get_mut(&item) {
            sim.item.ringing.clear();
        }
    }

    fn drop_offer(&mut self, operator_id: Uuid, missed: bool) {
        let Some(operator) = self.operators.get_mut(&operator_id) else {
            return;
        };
        let Some(item) = operator.ringing.take() else {
            return;
        };
        if missed {
            operator.misses += 1;
            if operator.misses >= self.rules.rules().max_consecutive_misses {
                operator.status = Status::Paused;
            }
        }
        if let Some(sim) = self.items.get_mut(&item) {
            sim.item.ringing.remove(&operator_id);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Arrive { kind, dialect } => {
                let id = Uuid::from_u128(self.next_id);
                self.next_id += 1;
                let kind = ItemKind::ALL[usize::from(*kind) % ItemKind::ALL.len()];
                let queue = self.rules.queue_for(kind).id.clone();
                self.items.insert(
                    id,
                    SimItem {
                        item: WaitingItem {
                            id,
                            kind,
                            queue,
                            waited_ms: 0,
                            created_ms: self.now,
                            attributes: Attributes {
                                dialect: Some(DIALECTS[usize::from(*dialect) % 3].to_owned()),
                                station: None,
                            },
                            ringing: BTreeSet::new(),
                            offered_before: BTreeMap::new(),
                        },
                        created_at: self.now,
                        held_by: None,
                        done: false,
                    },
                );
            }
            Op::Accept(index) => {
                let operator_id = self.operator_at(*index);
                let Some(item) = self.operators[&operator_id].ringing else {
                    return;
                };
                // Exactly one acceptance wins; every other offer of the item is withdrawn.
                self.withdraw_offers_for(item);
                let operator = self
                    .operators
                    .get_mut(&operator_id)
                    .expect("known operator");
                operator.status = Status::OnCall(item);
                operator.misses = 0;
                let sim = self.items.get_mut(&item).expect("known item");
                assert!(sim.held_by.is_none(), "an item accepted twice");
                sim.held_by = Some(operator_id);
            }
            Op::Reject(index) => {
                let operator_id = self.operator_at(*index);
                self.drop_offer(operator_id, false);
            }
            Op::Timeout(index) => {
                let operator_id = self.operator_at(*index);
                self.drop_offer(operator_id, true);
            }
            Op::Disconnect(index) => {
                let operator_id = self.operator_at(*index);
                self.drop_offer(operator_id, false);
                let operator = self
                    .operators
                    .get_mut(&operator_id)
                    .expect("known operator");
                if !matches!(operator.status, Status::OnCall(_)) {
                    operator.status = Status::Offline;
                }
            }
            Op::Available(index) | Op::Away(index) => {
                let operator_id = self.operator_at(*index);
                let now = self.now;
                if matches!(self.operators[&operator_id].status, Status::OnCall(_)) {
                    return;
                }
                if matches!(op, Op::Away(_)) {
                    self.drop_offer(operator_id, false);
                }
                let operator = self
                    .operators
                    .get_mut(&operator_id)
                    .expect("known operator");
                if matches!(op, Op::Available(_)) {
                    if operator.status != Status::Available {
                        operator.idle_since_ms = now;
                    }
                    operator.status = Status::Available;
                    operator.misses = 0;
                } else {
                    operator.status = Status::Away;
                }
            }
            Op::End(index) => {
                let operator_id = self.operator_at(*index);
                let now = self.now;
                let operator = self
                    .operators
                    .get_mut(&operator_id)
                    .expect("known operator");
                let Status::OnCall(item) = operator.status else {
                    return;
                };
                operator.status = Status::Available;
                operator.idle_since_ms = now;
                let sim = self.items.get_mut(&item).expect("known item");
                sim.done = true;
            }
            Op::Advance(ms) => self.now += i64::from(*ms),
        }
    }

    fn waiting(&self) -> Vec<WaitingItem> {
        self.items
            .values()
            .filter(|sim| !sim.done && sim.held_by.is_none())
            .map(|sim| {
                let mut item = sim.item.clone();
                item.waited_ms = self.now - sim.created_at;
                item
            })
            .collect()
    }

    fn free(&self) -> Vec<FreeOperator> {
        self.operators
            .iter()
            .filter(|(_, operator)| {
                operator.status == Status::Available && operator.ringing.is_none()
            })
            .map(|(id, operator)| FreeOperator {
                id: *id,
                skills: operator.skills.clone(),
                idle_since_ms: operator.idle_since_ms,
            })
            .collect()
    }

    /// One matching tick; checks the decision against the state it was made in.
    fn tick(&mut self) -> Result<(), TestCaseError> {
        let waiting = self.waiting();
        let free = self.free();
        let offers = plan(&self.rules, &waiting, &free);
        // The expected order, computed here independently of `service_order`: highest base
        // priority plus aging first, then the oldest.
        let mut order: Vec<&WaitingItem> = waiting.iter().collect();
        let aging = i64::from(self.rules.rules().aging_points_per_minute);
        order.sort_by_key(|item| {
            (
                -(item.kind.base_priority() + item.waited_ms / 60_000 * aging),
                item.created_ms,
                item.id,
            )
        });
        let offered_items: BTreeSet<Uuid> = offers.iter().map(|offer| offer.item).collect();
        let mut seen_operators = BTreeSet::new();
        for offer in &offers {
            prop_assert!(
                seen_operators.insert(offer.operator),
                "an operator got two offers in one tick"
            );
            let operator = free.iter().find(|operator| operator.id == offer.operator);
            prop_assert!(
                operator.is_some(),
                "an offer to an operator who is not free"
            );
            let item = waiting.iter().find(|item| item.id == offer.item);
            prop_assert!(item.is_some(), "an offer of an item that is not waiting");
            let (operator, item) = (operator.expect("checked"), item.expect("checked"));
            prop_assert!(
                eligible(&self.rules, item, operator),
                "an offer to an ineligible operator"
            );
            // Priority, then age: every item served before this one that this operator could
            // have taken got an offer in this tick, or was already ringing somewhere.
            for earlier in order.iter().take_while(|earlier| earlier.id != item.id) {
                let ring_all = self
                    .rules
                    .queue(&earlier.queue)
                    .is_some_and(|queue| queue.ring_all);
                if eligible(&self.rules, earlier, operator)
                    && (ring_all || earlier.ringing.is_empty())
                {
                    prop_assert!(
                        offered_items.contains(&earlier.id),
                        "a higher-priority or older eligible item was passed over"
                    );
                }
            }
        }
        for offer in &offers {
            let operator = self
                .operators
                .get_mut(&offer.operator)
                .expect("known operator");
            operator.ringing = Some(offer.item);
            let sim = self.items.get_mut(&offer.item).expect("known item");
            sim.item.ringing.insert(offer.operator);
            *sim.item.offered_before.entry(offer.operator).or_default() += 1;
            let ring_all = self
                .rules
                .queue(&sim.item.queue)
                .is_some_and(|queue| queue.ring_all);
            prop_assert!(
                ring_all || sim.item.ringing.len() == 1,
                "an item rings at two operators outside ring-all"
            );
        }
        // After a tick, no eligible item waits while an eligible operator is free.
        let waiting = self.waiting();
        for operator in self.free() {
            for item in &waiting {
                let ring_all = self
                    .rules
                    .queue(&item.queue)
                    .is_some_and(|queue| queue.ring_all);
                let could_ring = ring_all || item.ringing.is_empty();
                prop_assert!(
                    !(could_ring && eligible(&self.rules, item, &operator)),
                    "an eligible item waits while an eligible operator is free after a tick"
                );
            }
        }
        self.check_holding()
    }

    fn check_holding(&self) -> Result<(), TestCaseError> {
        for (id, sim) in &self.items {
            let holders: Vec<&Uuid> = self
                .operators
                .iter()
                .filter(|(_, operator)| operator.status == Status::OnCall(*id))
                .map(|(operator_id, _)| operator_id)
                .collect();
            prop_assert!(holders.len() <= 1, "an item held by two operators");
            if !sim.done {
                prop_assert_eq!(holders.first().copied().copied(), sim.held_by);
            }
            if !sim.done && sim.held_by.is_none() {
                let waited_secs = u64::try_from((self.now - sim.created_at) / 1000).unwrap_or(0);
                let deadline = next_deadline_secs(&self.rules, &sim.item.queue, waited_secs);
                prop_assert!(
                    deadline > waited_secs,
                    "a waiting item without a future deadline"
                );
            }
        }
        for operator in self.operators.values() {
            // Capacity: one voice call at a time, and nothing rings for someone on a call.
            if matches!(operator.status, Status::OnCall(_)) {
                prop_assert!(
                    operator.ringing.is_none(),
                    "an operator on a call is ringing"
                );
            }
            if operator.status == Status::Paused {
                prop_assert!(
                    operator.ringing.is_none()
                        || operator.misses < self.rules.rules().max_consecutive_misses
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(ops in proptest::collection::vec(op(), 1..120)) {
        let mut model = Model::new();
        for op in &ops {
            model.apply(op);
            model.tick()?;
        }
    }

    #[test]
    fn paused_operators_get_no_offers(ops in proptest::collection::vec(op(), 1..80)) {
        let mut model = Model::new();
        for op in &ops {
            model.apply(op);
            let paused: BTreeSet<Uuid> = model.operators.iter().filter(|(_, o)| o.status == Status::Paused).map(|(id, _)| *id).collect();
            let offers = plan(&model.rules, &model.waiting(), &model.free());
            prop_assert!(offers.iter().all(|offer| !paused.contains(&offer.operator)));
            model.tick()?;
        }
    }
}

fn item(
    kind: ItemKind,
    queue: &str,
    waited_ms: i64,
    created_ms: i64,
    dialect: &str,
) -> WaitingItem {
    WaitingItem {
        id: Uuid::from_u128(u128::try_from(created_ms).unwrap_or(0)),
        kind,
        queue: queue.to_owned(),
        waited_ms,
        created_ms,
        attributes: Attributes {
            dialect: Some(dialect.to_owned()),
            station: Some("yantian".to_owned()),
        },
        ringing: BTreeSet::new(),
        offered_before: BTreeMap::new(),
    }
}

fn operator(id: u128, skills: &[&str], idle_since_ms: i64) -> FreeOperator {
    FreeOperator {
        id: Uuid::from_u128(id),
        skills: skills.iter().map(|skill| (*skill).to_owned()).collect(),
        idle_since_ms,
    }
}

#[test]
fn a_cantonese_call_waits_for_a_cantonese_operator_until_the_step_widens() {
    let rules = ValidRuleSet::default_rules();
    let mandarin_only = operator(1, &["dialect:mandarin"], 0);
    let call = item(ItemKind::Call, "calls", 5_000, 1, "Cantonese");
    assert!(plan(
        &rules,
        std::slice::from_ref(&call),
        std::slice::from_ref(&mandarin_only)
    )
    .is_empty());
    let cantonese = operator(2, &["dialect:cantonese"], 10);
    let offers = plan(
        &rules,
        std::slice::from_ref(&call),
        &[mandarin_only.clone(), cantonese],
    );
    assert_eq!(
        offers,
        [PlannedOffer {
            item: call.id,
            operator: Uuid::from_u128(2)
        }]
    );
    let later = WaitingItem {
        waited_ms: 41_000,
        ..call
    };
    assert_eq!(
        plan(&rules, std::slice::from_ref(&later), &[mandarin_only]).len(),
        1,
        "anyone after 40 s"
    );
}

#[test]
fn emergencies_ring_everyone_and_come_first() {
    let rules = ValidRuleSet::default_rules();
    let old_call = item(ItemKind::Call, "calls", 50_000, 1, "");
    let emergency = item(ItemKind::Emergency, "emergency", 0, 2, "");
    let operators = [
        operator(1, &[], 0),
        operator(2, &[], 1),
        operator(3, &[], 2),
    ];
    let offers = plan(&rules, &[old_call, emergency.clone()], &operators);
    assert_eq!(offers.len(), 3);
    assert!(
        offers.iter().all(|offer| offer.item == emergency.id),
        "all ring for the emergency"
    );
}

#[test]
fn the_operator_idle_longest_and_not_yet_tried_is_chosen() {
    let rules = ValidRuleSet::default_rules();
    let mut call = item(ItemKind::Call, "calls", 50_000, 1, "");
    let operators = [operator(1, &[], 100), operator(2, &[], 50)];
    assert_eq!(
        plan(&rules, std::slice::from_ref(&call), &operators)[0].operator,
        Uuid::from_u128(2)
    );
    call.offered_before.insert(Uuid::from_u128(2), 1);
    assert_eq!(
        plan(&rules, &[call], &operators)[0].operator,
        Uuid::from_u128(1),
        "someone new first"
    );
}

#[test]
fn aging_lets_an_old_call_overtake_a_new_one_of_its_kind_but_never_an_emergency() {
    let rules = ValidRuleSet::default_rules();
    let old_callback = item(ItemKind::Callback, "callbacks", 30 * 60_000, 5, "");
    let new_callback = item(ItemKind::Callback, "callbacks", 0, 1, "");
    let emergency = item(ItemKind::Emergency, "emergency", 0, 9, "");
    let binding = [new_callback, old_callback.clone(), emergency.clone()];
    let order = service_order(&rules, &binding);
    assert_eq!(order[0].id, emergency.id);
    assert_eq!(order[1].id, old_callback.id);
}
