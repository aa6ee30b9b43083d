//! Routing rules as data: skills, queues, widening steps, ring-all, overflow, aging, wrap-up and
//! auto-pause. Parsed from TOML (or JSON) and validated whole: an invalid rule set is refused
//! entirely, so the one in force never changes halfway.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ItemKind;

/// Why a rule set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("the rule set is not valid TOML or JSON: {0}")]
    Syntax(String),
    #[error("queue '{0}' is defined twice")]
    DuplicateQueue(String),
    #[error("queue '{queue}' names the unknown skill '{skill}'")]
    UnknownSkill { queue: String, skill: String },
    #[error("queue '{queue}' uses the unknown attribute '{{{attribute}}}' (known: {{dialect}}, {{station}})")]
    UnknownAttribute { queue: String, attribute: String },
    #[error("queue '{queue}' overflows to the unknown queue '{target}'")]
    UnknownQueue { queue: String, target: String },
    #[error("queue '{0}' overflows to itself")]
    OverflowToItself(String),
    #[error("queue '{0}' has no routing steps")]
    NoSteps(String),
    #[error("queue '{0}': the first step must start at 0 s and later steps must start later")]
    StepsOutOfOrder(String),
    #[error("queue '{queue}' has overflow_to without max_wait_secs")]
    OverflowWithoutMaxWait { queue: String },
    #[error("{0} items have no queue: every kind (emergency, technical, call, callback) needs exactly one")]
    KindWithoutQueue(&'static str),
    #[error("{0} items are claimed by more than one queue")]
    KindInTwoQueues(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// One routing step: from `after_secs` of waiting on, an operator needs all of `require`.
/// A requirement is a skill (`nurse`) or a template on the item (`dialect:{dialect}`,
/// `station:{station}`); a template whose attribute the item lacks is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub after_secs: u32,
    #[serde(default)]
    pub require: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRule {
    pub id: String,
    /// The kinds of item that enter this queue when they are created.
    #[serde(default)]
    pub kinds: Vec<ItemKind>,
    /// Offer to every eligible available operator at once; the first acceptance wins.
    #[serde(default)]
    pub ring_all: bool,
    /// After this long waiting, the item overflows to `overflow_to` (or, without one, the
    /// supervisors are alerted and it stays).
    #[serde(default)]
    pub max_wait_secs: Option<u32>,
    #[serde(default)]
    pub overflow_to: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Every skill an operator may have; requirements may name only these (or templates).
    pub skills: Vec<String>,
    pub queues: Vec<QueueRule>,
    /// Priority points an item gains per minute of waiting, so nothing starves.
    #[serde(default = "default_aging")]
    pub aging_points_per_minute: u32,
    /// Seconds of wrap-up after each call before the operator is offered the next.
    #[serde(default)]
    pub wrap_up_secs: u32,
    /// Consecutive unanswered offers after which an operator is paused.
    #[serde(default = "default_misses")]
    pub max_consecutive_misses: u32,
    /// An emergency still unanswered this long starts the family cascade by itself.
    #[serde(default = "default_family_after")]
    pub family_after_secs: u32,
    /// How long each ordered contact has to acknowledge before the next is asked.
    #[serde(default = "default_cascade_step")]
    pub cascade_step_secs: u32,
    /// A device offline this long (its alarm still open) tells the family through the cascade.
    #[serde(default = "default_offline_family_after")]
    pub offline_family_after_secs: u32,
}

fn default_offline_family_after() -> u32 {
    1800
}

fn default_family_after() -> u32 {
    60
}

fn default_cascade_step() -> u32 {
    120
}

fn default_aging() -> u32 {
    10
}

fn default_misses() -> u32 {
    2
}

const ATTRIBUTES: &[&str] = &["dialect", "station"];

/// A rule set that passed validation; the only kind the engine accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRuleSet {
    rules: RuleSet,
}

impl ValidRuleSet {
    /// Parses TOML (or JSON, when the text starts with `{`) and validates it.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let rules: RuleSet = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|error| RuleError::Syntax(error.to_string()))?
        } else {
            toml::from_str(text).map_err(|error| RuleError::Syntax(error.to_string()))?
        };
        Self::validate(rules)
    }

    pub fn validate(mut rules: RuleSet) -> Result<Self, RuleError> {
        // Skills are compared in lower case everywhere (operators' skills are stored so).
        for skill in &mut rules.skills {
            *skill = skill.to_lowercase();
        }
        for requirement in rules
            .queues
            .iter_mut()
            .flat_map(|queue| queue.steps.iter_mut())
            .flat_map(|step| step.require.iter_mut())
        {
            *requirement = requirement.to_lowercase();
        }
        let skills: BTreeSet<&str> = rules.skills.iter().map(String::as_str).collect();
        let mut ids = BTreeSet::new();
        for queue in &rules.queues {
            if queue.id.is_empty() || queue.id.len() > 64 {
                return Err(RuleError::Invalid(
                    "a queue id must be 1 to 64 characters".to_owned(),
                ));
            }
            if !ids.insert(queue.id.as_str()) {
                return Err(RuleError::DuplicateQueue(queue.id.clone()));
            }
        }
        for queue in &rules.queues {
            if queue.steps.is_empty() {
                return Err(RuleError::NoSteps(queue.id.clone()));
            }
            let ordered = queue.steps[0].after_secs == 0
                && queue
                    .steps
                    .windows(2)
                    .all(|pair| pair[0].after_secs < pair[1].after_secs);
            if !ordered {
                return Err(RuleError::StepsOutOfOrder(queue.id.clone()));
            }
            for requirement in queue.steps.iter().flat_map(|step| &step.require) {
                match template_attribute(requirement) {
                    Some(attribute) if !ATTRIBUTES.contains(&attribute) => {
                        return Err(RuleError::UnknownAttribute {
                            queue: queue.id.clone(),
                            attribute: attribute.to_owned(),
                        })
                    }
                    Some(_) => {}
                    None if !skills.contains(requirement.as_str()) => {
                        return Err(RuleError::UnknownSkill {
                            queue: queue.id.clone(),
                            skill: requirement.clone(),
                        })
                    }
                    None => {}
                }
            }
            if let Some(target) = &queue.overflow_to {
                if target == &queue.id {
                    return Err(RuleError::OverflowToItself(queue.id.clone()));
                }
                if !ids.contains(target.as_str()) {
                    return Err(RuleError::UnknownQueue {
                        queue: queue.id.clone(),
                        target: target.clone(),
                    });
                }
                if queue.max_wait_secs.is_none() {
                    return Err(RuleError::OverflowWithoutMaxWait {
                        queue: queue.id.clone(),
                    });
                }
            }
        }
        for kind in ItemKind::ALL {
            let n = rules
                .queues
                .iter()
                .filter(|queue| queue.kinds.contains(kind))
                .count();
            match n {
                0 => return Err(RuleError::KindWithoutQueue(kind.as_str())),
                1 => {}
                _ => return Err(RuleError::KindInTwoQueues(kind.as_str())),
            }
        }
        if rules.cascade_step_secs == 0 {
            return Err(RuleError::Invalid(
                "cascade_step_secs must be at least 1".to_owned(),
            ));
        }
        if rules.max_consecutive_misses == 0 {
            return Err(RuleError::Invalid(
                "max_consecutive_misses must be at least 1".to_owned(),
            ));
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn queue(&self, id: &str) -> Option<&QueueRule> {
        self.rules.queues.iter().find(|queue| queue.id == id)
    }

    /// The queue new items of `kind` enter.
    pub fn queue_for(&self, kind: ItemKind) -> &QueueRule {
        // Validation guarantees exactly one queue per kind.
        self.rules
            .queues
            .iter()
            .find(|queue| queue.kinds.contains(&kind))
            .unwrap_or(&self.rules.queues[0])
    }

    /// The skills an operator needs for an item of `queue` that has waited `waited_secs`, with
    /// templates filled in from the item's attributes.
    pub fn required_skills(
        &self,
        queue: &str,
        waited_secs: u64,
        attributes: &Attributes,
    ) -> Vec<String> {
        let Some(queue) = self.queue(queue) else {
            return Vec::new();
        };
        let step = queue
            .steps
            .iter()
            .rev()
            .find(|step| u64::from(step.after_secs) <= waited_secs)
            .unwrap_or(&queue.steps[0]);
        step.require
            .iter()
            .filter_map(|requirement| expand(requirement, attributes))
            .collect()
    }

    /// When (seconds of waiting) the item's requirements next widen, if they ever do.
    pub fn next_widening(&self, queue: &str, waited_secs: u64) -> Option<u32> {
        self.queue(queue)?
            .steps
            .iter()
            .map(|step| step.after_secs)
            .find(|after| u64::from(*after) > waited_secs)
    }

    /// The rule set as JSON (how it is stored, and what `admin routing show` prints).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.rules).unwrap_or_default()
    }

    /// The built-in rule set used until an administrator loads another.
    pub fn default_rules() -> Self {
        // The text is a constant checked by the `default_rules_are_valid` test.
        Self::parse(DEFAULT_RULES).unwrap_or_else(|_| Self {
            rules: RuleSet {
                skills: Vec::new(),
                queues: Vec::new(),
                aging_points_per_minute: default_aging(),
                wrap_up_secs: 0,
                max_consecutive_misses: default_misses(),
                family_after_secs: default_family_after(),
                cascade_step_secs: default_cascade_step(),
                offline_family_after_secs: default_offline_family_after(),
            },
        })
    }
}

/// What an item brings to template requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub dialect: Option<String>,
    pub station: Option<String>,
}

fn template_attribute(requirement: &str) -> Option<&str> {
    let start = requirement.find('{')?;
    let end = requirement[start..].find('}')? + start;
    Some(&requirement[start + 1..end])
}

fn expand(requirement: &str, attributes: &Attributes) -> Option<String> {
    let Some(attribute) = template_attribute(requirement) else {
        return Some(requirement.to_owned());
    };
    let value = match attribute {
        "dialect" => attributes.dialect.as_deref(),
        "station" => attributes.station.as_deref(),
        _ => None,
    }?;
    if value.is_empty() {
        return None;
    }
    Some(requirement.replace(&format!("{{{attribute}}}"), &value.to_lowercase()))
}

/// The built-in routing: emergencies ring everyone, and after 15 s unanswered overflow to an
/// escalated queue with the supervisors alerted; calls look for the senior's dialect for 20 s,
/// then the senior's station for 20 s more, then anyone.
pub const DEFAULT_RULES: &str = r#"
skills = ["nurse", "supervisor"]
aging_points_per_minute = 10
wrap_up_secs = 0
max_consecutive_misses = 2
family_after_secs = 60
cascade_step_secs = 120
offline_family_after_secs = 1800

[[queues]]
id = "emergency"
kinds = ["emergency"]
ring_all = true
max_wait_secs = 15
overflow_to = "emergency_escalated"
steps = [{ after_secs = 0 }]

# Not accepted within 15 s: the supervisors are alerted and it keeps ringing everyone here,
# with a reminder every minute after 60 s.
[[queues]]
id = "emergency_escalated"
ring_all = true
max_wait_secs = 45
steps = [{ after_secs = 0 }]

[[queues]]
id = "technical"
kinds = ["technical"]
steps = [{ after_secs = 0 }]

[[queues]]
id = "calls"
kinds = ["call"]
steps = [
  { after_secs = 0, require = ["dialect:{dialect}"] },
  { after_secs = 20, require = ["station:{station}"] },
  { after_secs = 40 },
]

[[queues]]
id = "callbacks"
kinds = ["callback"]
steps = [{ after_secs = 0 }]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_valid() {
        ValidRuleSet::parse(DEFAULT_RULES).unwrap();
    }

    #[test]
    fn a_step_naming_a_missing_skill_is_refused() {
        let text = DEFAULT_RULES.replace(
            "steps = [{ after_secs = 0 }]\n\n[[queues]]\nid = \"calls\"",
            "steps = [{ after_secs = 0, require = [\"klingon\"] }]\n\n[[queues]]\nid = \"calls\"",
        );
        assert_eq!(
            ValidRuleSet::parse(&text),
            Err(RuleError::UnknownSkill {
                queue: "technical".to_owned(),
                skill: "klingon".to_owned()
            })
        );
    }

    #[test]
    fn overflow_to_a_missing_queue_is_refused() {
        let text = DEFAULT_RULES.replace(
            "overflow_to = \"emergency_escalated\"",
            "overflow_to = \"nowhere\"",
        );
        assert_ne!(text, DEFAULT_RULES, "the test's edit applied");
        assert!(matches!(
            ValidRuleSet::parse(&text),
            Err(RuleError::UnknownQueue { .. })
        ));
    }

    #[test]
    fn unknown_fields_and_attributes_are_refused() {
        assert!(matches!(
            ValidRuleSet::parse(&DEFAULT_RULES.replace("wrap_up_secs", "wrapup_secs")),
            Err(RuleError::Syntax(_))
        ));
        assert!(matches!(
            ValidRuleSet::parse(&DEFAULT_RULES.replace("{station}", "{shoe_size}")),
            Err(RuleError::UnknownAttribute { .. })
        ));
    }

    #[test]
    fn every_kind_needs_one_queue() {
        assert_eq!(
            ValidRuleSet::parse(&DEFAULT_RULES.replace("kinds = [\"callback\"]", "kinds = []")),
            Err(RuleError::KindWithoutQueue("callback"))
        );
    }

    #[test]
    fn requirements_widen_with_waiting_time() {
        let rules = ValidRuleSet::default_rules();
        let attributes = Attributes {
            dialect: Some("Cantonese".to_owned()),
            station: Some("yantian".to_owned()),
        };
        assert_eq!(
            rules.required_skills("calls", 0, &attributes),
            ["dialect:cantonese"]
        );
        assert_eq!(
            rules.required_skills("calls", 25, &attributes),
            ["station:yantian"]
        );
        assert!(rules.required_skills("calls", 45, &attributes).is_empty());
        assert_eq!(rules.next_widening("calls", 5), Some(20));
        assert_eq!(rules.next_widening("calls", 45), None);
        let unknown = Attributes::default();
        assert!(
            rules.required_skills("calls", 0, &unknown).is_empty(),
            "a missing attribute drops its requirement"
        );
    }
}
