//! `carebell admin care ...`: proactive care. Schedules (welfare calls, reminders, check-ins),
//! the content catalogue and its delivery, residents' language and interests, and tablets whose
//! monthly test call is missing.

use anyhow::Context;
use carebell_store::{NewContent, NewSchedule, ScheduleKind, Store, REMINDER_RETRY_SECS};
use clap::Subcommand;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum CareCommand {
    /// Add a schedule to a resident; prints its id. The rule is an RFC 5545 RRULE
    /// (`FREQ=WEEKLY;BYDAY=MO,TH` with --start 2026-12-01T10:00), in the resident's time zone.
    AddSchedule {
        #[arg(long)]
        resident: Uuid,
        /// welfare_call, reminder or check_in.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        rule: String,
        /// The first occurrence, local time (DTSTART): 2026-12-01T08:00.
        #[arg(long, value_parser = local_time)]
        start: chrono::NaiveDateTime,
        #[arg(long, default_value = "Asia/Shanghai")]
        time_zone: String,
        /// How long an attempt waits for the confirm button (a check-in's window).
        #[arg(long, default_value_t = REMINDER_RETRY_SECS)]
        wait_secs: u32,
    },
    /// A resident's language (for content) and interests (content tags).
    SetProfile {
        #[arg(long)]
        resident: Uuid,
        #[arg(long)]
        language: String,
        #[arg(long, value_delimiter = ',')]
        interests: Vec<String>,
    },
    /// Add an item to the catalogue; prints its id (and, with --deliver, how many tablets it
    /// was sent to).
    AddContent {
        /// health, programme, story, song or notice.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
        #[arg(long, default_value = "")]
        media_url: String,
        #[arg(long, default_value = "zh")]
        language: String,
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Only this station's tablets.
        #[arg(long)]
        station: Option<Uuid>,
        /// Send it to the tablets it targets at once.
        #[arg(long)]
        deliver: bool,
        /// The largest message a tablet takes (the device frame limit).
        #[arg(
            long,
            env = "CAREBELL_DEVICE__MAX_FRAME_BYTES",
            default_value_t = 65536
        )]
        max_frame_bytes: usize,
    },
    /// Send an item to every tablet it targets that has not had it; prints how many.
    DeliverContent {
        #[arg(long)]
        id: Uuid,
    },
    /// Which tablets an item was sent to, received and opened.
    ContentReport {
        #[arg(long)]
        id: Uuid,
    },
    /// Tablets with no answered call in the period (their monthly test call is missing), by
    /// station.
    UntestedTablets {
        #[arg(long, default_value_t = 31)]
        days: u32,
    },
}

/// A local date and time, with or without seconds: `2026-12-01T08:00`, `2026-12-01T08:00:30`.
fn local_time(text: &str) -> Result<chrono::NaiveDateTime, String> {
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(|| format!("{text:?} is not a local date and time like 2026-12-01T08:00"))
}

impl CareCommand {
    /// The audit log's action and resident for this command.
    pub fn audit_label(&self) -> (&'static str, Option<Uuid>) {
        match self {
            CareCommand::AddSchedule { resident, .. } => {
                ("admin.care.add_schedule", Some(*resident))
            }
            CareCommand::SetProfile { resident, .. } => ("admin.care.set_profile", Some(*resident)),
            CareCommand::AddContent { .. } => ("admin.care.add_content", None),
            CareCommand::DeliverContent { .. } => ("admin.care.deliver_content", None),
            CareCommand::ContentReport { .. } => ("admin.care.content_report", None),
            CareCommand::UntestedTablets { .. } => ("admin.care.untested_tablets", None),
        }
    }
}

pub async fn execute(store: &Store, command: CareCommand) -> anyhow::Result<String> {
    match command {
        CareCommand::AddSchedule {
            resident,
            kind,
            title,
            rule,
            start,
            time_zone,
            wait_secs,
        } => {
            let kind = ScheduleKind::parse(&kind).with_context(|| {
                format!("unknown schedule kind {kind:?}: welfare_call, reminder or check_in")
            })?;
            let id = store
                .add_schedule(&NewSchedule {
                    resident_id: resident,
                    kind,
                    title,
                    rule,
                    starts_local: start,
                    time_zone,
                    wait_seconds: wait_secs,
                    created_by: "admin:cli".to_owned(),
                })
                .await
                .context("failed to add the schedule")?;
            Ok(id.to_string())
        }
        CareCommand::SetProfile {
            resident,
            language,
            interests,
        } => {
            store
                .set_resident_profile(resident, &language, &interests)
                .await
                .context("failed to set the resident's language and interests")?;
            Ok(format!(
                "resident {resident}: language {language}, interests {interests:?}"
            ))
        }
        CareCommand::AddContent {
            kind,
            title,
            body,
            media_url,
            language,
            tags,
            station,
            deliver,
            max_frame_bytes,
        } => {
            let id = store
                .add_content(
                    &NewContent {
                        kind,
                        title,
                        body,
                        media_url,
                        language,
                        tags,
                        station_id: station,
                        created_by: "admin:cli".to_owned(),
                    },
                    max_frame_bytes,
                )
                .await
                .context("failed to add the content")?;
            if deliver {
                let sent = store
                    .deliver_content(id)
                    .await
                    .context("added, but sending it failed")?;
                return Ok(format!("{id}\nsent to {sent} tablets"));
            }
            Ok(id.to_string())
        }
        CareCommand::DeliverContent { id } => {
            let sent = store
                .deliver_content(id)
                .await
                .context("failed to send the content")?;
            Ok(format!("sent to {sent} tablets"))
        }
        CareCommand::ContentReport { id } => {
            let deliveries = store
                .content_deliveries(id)
                .await
                .context("failed to read the deliveries")?;
            Ok(table(
                "device\treceived\topened",
                deliveries.iter().map(|delivery| {
                    format!(
                        "{}\t{}\t{}",
                        delivery.device_id, delivery.received, delivery.opened
                    )
                }),
            ))
        }
        CareCommand::UntestedTablets { days } => {
            let tablets = store
                .untested_tablets(days)
                .await
                .context("failed to list the tablets")?;
            Ok(table(
                "station\tdevice\tresident\tlast answered call",
                tablets.iter().map(|tablet| {
                    format!(
                        "{}\t{}\t{}\t{}",
                        tablet.station_name,
                        tablet.device_id,
                        tablet.resident_id,
                        tablet
                            .last_answered_at
                            .map_or("never".to_owned(), |at| at.to_rfc3339())
                    )
                }),
            ))
        }
    }
}

/// A tab-separated table: the header line, then one line per row.
fn table(header: &str, rows: impl Iterator<Item = String>) -> String {
    std::iter::once(header.to_owned())
        .chain(rows)
        .collect::<Vec<_>>()
        .join("\n")
}
