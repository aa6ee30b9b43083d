//! Reports per station and period, the way the seed counts them: remote services (calls
//! handled), on-site services (orders completed), emergencies, the service level, and per
//! provider the acceptance rate, the on-time rate and the rating. Read either from the live
//! per-day figures (kept by a trigger on the event log) or recomputed from the log itself; the
//! two always agree.

use chrono::NaiveDate;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::{Result, Store, StoreError};

/// Where the figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The live per-day tables.
    Live,
    /// A fresh count over the event log.
    Recomputed,
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ProviderFigures {
    pub provider_id: Uuid,
    pub provider_name: String,
    pub offers: i64,
    pub accepted: i64,
    pub declined: i64,
    pub timed_out: i64,
    pub arrivals: i64,
    pub on_time: i64,
    pub completed: i64,
    pub ratings: i64,
    pub rating_sum: i64,
}

impl ProviderFigures {
    /// Accepted of the offers decided (accepted, declined or timed out).
    pub fn acceptance_rate(&self) -> Option<f64> {
        ratio(
            self.accepted,
            self.accepted + self.declined + self.timed_out,
        )
    }

    pub fn on_time_rate(&self) -> Option<f64> {
        ratio(self.on_time, self.arrivals)
    }

    pub fn average_rating(&self) -> Option<f64> {
        ratio(self.rating_sum, self.ratings)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct StationFigures {
    pub station_id: Uuid,
    pub station_name: String,
    /// Calls answered by an operator, call-backs included (线上服务).
    pub remote_services: i64,
    pub emergencies: i64,
    pub calls_offered: i64,
    pub calls_answered: i64,
    pub answered_within_60s: i64,
    pub calls_abandoned: i64,
    pub short_abandoned: i64,
    pub orders_created: i64,
    /// On-site services (线下服务).
    pub orders_completed: i64,
    pub orders_cancelled: i64,
    pub escalations: i64,
    #[sqlx(skip)]
    pub providers: Vec<ProviderFigures>,
}

impl StationFigures {
    /// Answered within 60 s of the calls answered or abandoned, short abandons left out.
    pub fn service_level(&self) -> Option<f64> {
        ratio(
            self.answered_within_60s,
            self.calls_answered + self.calls_abandoned - self.short_abandoned,
        )
    }
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    // Counts stay far below 2^53: exact as f64.
    (whole > 0).then(|| part as f64 / whole as f64)
}

const STATION_COLUMNS: &str = "remote_services, emergencies, calls_offered, calls_answered,
    answered_within_60s, calls_abandoned, short_abandoned, orders_created, orders_completed,
    orders_cancelled, escalations";

const PROVIDER_COLUMNS: &str =
    "offers, accepted, declined, timed_out, arrivals, on_time, completed, ratings, rating_sum";

fn sums(columns: &str) -> String {
    columns
        .split(',')
        .map(|column| {
            let column = column.trim();
            format!("coalesce(sum(d.{column}), 0)::bigint AS {column}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The station events of the period, each with its station and local day.
const STATION_EVENTS: &str = "
    SELECT x.* FROM (
        SELECT e.kind, coalesce(e.detail->>'kind', '') AS call_kind,
               (e.detail->>'wait_ms')::bigint AS wait_ms,
               s.id AS station_id, (e.at AT TIME ZONE s.time_zone)::date AS day
        FROM events e
        LEFT JOIN calls c ON c.id = e.call_id AND e.kind LIKE 'call.%'
        JOIN stations s ON s.id = CASE WHEN e.kind LIKE 'call.%' THEN nullif(c.station, '')::uuid
                                       ELSE (e.detail->>'station_id')::uuid END
        WHERE e.kind IN ('call.created', 'call.answered', 'call.abandoned', 'order.created',
                         'order.completed', 'order.cancelled', 'order.escalated')
          AND e.at >= $1::date - interval '2 days' AND e.at < $2::date + interval '2 days'
    ) x WHERE x.day >= $1 AND x.day < $2 AND ($3::uuid IS NULL OR x.station_id = $3)";

const PROVIDER_EVENTS: &str = "
    SELECT x.* FROM (
        SELECT e.kind, e.detail, s.id AS station_id, (e.detail->>'provider_id')::uuid AS provider_id,
               (e.at AT TIME ZONE s.time_zone)::date AS day
        FROM events e
        JOIN stations s ON s.id = (e.detail->>'station_id')::uuid
        WHERE e.kind IN ('order.offered', 'order.accepted', 'order.declined', 'order.arrived',
                         'order.completed', 'order.rated')
          AND e.detail ? 'provider_id'
          AND e.at >= $1::date - interval '2 days' AND e.at < $2::date + interval '2 days'
    ) x WHERE x.day >= $1 AND x.day < $2 AND ($3::uuid IS NULL OR x.station_id = $3)";

impl Store {
    /// Figures per station for the local days `from` ..< `to`, each with its providers'.
    pub async fn service_report(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        station: Option<Uuid>,
        source: Source,
    ) -> Result<Vec<StationFigures>> {
        if to <= from {
            return Err(StoreError::Invalid(format!(
                "a report period ends after it starts ({from} to {to})"
            )));
        }
        let station_sql = match source {
            Source::Live => format!(
                "SELECT d.station_id, s.name AS station_name, {}
                 FROM station_day_stats d JOIN stations s ON s.id = d.station_id
                 WHERE d.day >= $1 AND d.day < $2 AND ($3::uuid IS NULL OR d.station_id = $3)
                 GROUP BY d.station_id, s.name ORDER BY s.name, d.station_id",
                sums(STATION_COLUMNS)
            ),
            Source::Recomputed => format!(
                "SELECT ev.station_id, s.name AS station_name,
                    count(*) FILTER (WHERE ev.kind = 'call.answered') AS remote_services,
                    count(*) FILTER (WHERE ev.kind = 'call.created' AND ev.call_kind = 'emergency') AS emergencies,
                    count(*) FILTER (WHERE ev.kind = 'call.created' AND ev.call_kind <> 'callback') AS calls_offered,
                    count(*) FILTER (WHERE ev.kind = 'call.answered' AND ev.call_kind <> 'callback') AS calls_answered,
                    count(*) FILTER (WHERE ev.kind = 'call.answered' AND ev.call_kind <> 'callback' AND ev.wait_ms <= 60000) AS answered_within_60s,
                    count(*) FILTER (WHERE ev.kind = 'call.abandoned' AND ev.call_kind <> 'callback') AS calls_abandoned,
                    count(*) FILTER (WHERE ev.kind = 'call.abandoned' AND ev.call_kind <> 'callback' AND ev.wait_ms < stats_short_abandon_ms()) AS short_abandoned,
                    count(*) FILTER (WHERE ev.kind = 'order.created') AS orders_created,
                    count(*) FILTER (WHERE ev.kind = 'order.completed') AS orders_completed,
                    count(*) FILTER (WHERE ev.kind = 'order.cancelled') AS orders_cancelled,
                    count(*) FILTER (WHERE ev.kind = 'order.escalated') AS escalations
                 FROM ({STATION_EVENTS}) ev JOIN stations s ON s.id = ev.station_id
                 GROUP BY ev.station_id, s.name ORDER BY s.name, ev.station_id"
            ),
        };
        let mut stations: Vec<StationFigures> = sqlx::query_as(&station_sql)
            .bind(from)
            .bind(to)
            .bind(station)
            .fetch_all(&self.pool)
            .await?;

        let provider_sql = match source {
            Source::Live => format!(
                "SELECT d.station_id, d.provider_id, p.name AS provider_name, {}
                 FROM provider_day_stats d JOIN providers p ON p.id = d.provider_id
                 WHERE d.day >= $1 AND d.day < $2 AND ($3::uuid IS NULL OR d.station_id = $3)
                 GROUP BY d.station_id, d.provider_id, p.name
                 ORDER BY p.name, d.provider_id",
                sums(PROVIDER_COLUMNS)
            ),
            Source::Recomputed => format!(
                "SELECT ev.station_id, ev.provider_id, p.name AS provider_name,
                    count(*) FILTER (WHERE ev.kind = 'order.offered') AS offers,
                    count(*) FILTER (WHERE ev.kind = 'order.accepted') AS accepted,
                    count(*) FILTER (WHERE ev.kind = 'order.declined'
                                     AND coalesce(ev.detail->>'reason', '') <> 'timed_out') AS declined,
                    count(*) FILTER (WHERE ev.kind = 'order.declined'
                                     AND coalesce(ev.detail->>'reason', '') = 'timed_out') AS timed_out,
                    count(*) FILTER (WHERE ev.kind = 'order.arrived') AS arrivals,
                    count(*) FILTER (WHERE ev.kind = 'order.arrived'
                                     AND coalesce((ev.detail->>'on_time')::boolean, false)) AS on_time,
                    count(*) FILTER (WHERE ev.kind = 'order.completed') AS completed,
                    count(*) FILTER (WHERE ev.kind = 'order.rated') AS ratings,
                    coalesce(sum((ev.detail->>'stars')::int) FILTER (WHERE ev.kind = 'order.rated'), 0)::bigint AS rating_sum
                 FROM ({PROVIDER_EVENTS}) ev JOIN providers p ON p.id = ev.provider_id
                 GROUP BY ev.station_id, ev.provider_id, p.name ORDER BY p.name, ev.provider_id"
            ),
        };
        let rows = sqlx::query(&provider_sql)
            .bind(from)
            .bind(to)
            .bind(station)
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let station_id: Uuid = row.try_get("station_id")?;
            let figures = ProviderFigures::from_row(&row)?;
            match stations.iter_mut().find(|s| s.station_id == station_id) {
                Some(station) => station.providers.push(figures),
                None => {
                    let name: String =
                        sqlx::query_scalar("SELECT name FROM stations WHERE id = $1")
                            .bind(station_id)
                            .fetch_one(&self.pool)
                            .await?;
                    stations.push(StationFigures {
                        station_id,
                        station_name: name,
                        remote_services: 0,
                        emergencies: 0,
                        calls_offered: 0,
                        calls_answered: 0,
                        answered_within_60s: 0,
                        calls_abandoned: 0,
                        short_abandoned: 0,
                        orders_created: 0,
                        orders_completed: 0,
                        orders_cancelled: 0,
                        escalations: 0,
                        providers: vec![figures],
                    });
                }
            }
        }
        Ok(stations)
    }

    /// A provider's own figures over all time, from the live tables.
    pub async fn provider_figures(&self, provider_id: Uuid) -> Result<ProviderFigures> {
        let row = sqlx::query(&format!(
            "SELECT p.id AS provider_id, p.name AS provider_name, {}
             FROM providers p LEFT JOIN provider_day_stats d ON d.provider_id = p.id
             WHERE p.id = $1 GROUP BY p.id, p.name",
            sums(PROVIDER_COLUMNS)
        ))
        .bind(provider_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "provider",
            id: provider_id.to_string(),
        })?;
        Ok(ProviderFigures::from_row(&row)?)
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(String::new, |v| format!("{:.1}", v * 100.0))
}

/// The report as CSV: one row per station, then one per provider at that station.
pub fn report_csv(from: NaiveDate, to: NaiveDate, stations: &[StationFigures]) -> String {
    let mut out = String::from(
        "scope,from,to,station_id,station,provider_id,provider,remote_services,onsite_services,\
         emergencies,service_level_pct,calls_answered,calls_abandoned,orders_created,\
         orders_cancelled,escalations,offers,accepted,acceptance_rate_pct,arrivals,\
         on_time_rate_pct,ratings,average_rating\n",
    );
    for station in stations {
        out.push_str(&format!(
            "station,{from},{to},{},{},,,{},{},{},{},{},{},{},{},{},,,,,,,\n",
            station.station_id,
            csv_field(&station.station_name),
            station.remote_services,
            station.orders_completed,
            station.emergencies,
            percent(station.service_level()),
            station.calls_answered,
            station.calls_abandoned,
            station.orders_created,
            station.orders_cancelled,
            station.escalations,
        ));
        for provider in &station.providers {
            out.push_str(&format!(
                "provider,{from},{to},{},{},{},{},,{},,,,,,,,{},{},{},{},{},{},{}\n",
                station.station_id,
                csv_field(&station.station_name),
                provider.provider_id,
                csv_field(&provider.provider_name),
                provider.completed,
                provider.offers,
                provider.accepted,
                percent(provider.acceptance_rate()),
                provider.arrivals,
                percent(provider.on_time_rate()),
                provider.ratings,
                provider
                    .average_rating()
                    .map_or_else(String::new, |r| format!("{r:.2}")),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_have_as_many_fields_as_the_header_and_names_are_quoted() {
        let station = StationFigures {
            station_id: Uuid::nil(),
            station_name: "盐田, \"东\" station".to_owned(),
            remote_services: 3,
            emergencies: 1,
            calls_offered: 3,
            calls_answered: 2,
            answered_within_60s: 1,
            calls_abandoned: 1,
            short_abandoned: 0,
            orders_created: 2,
            orders_completed: 1,
            orders_cancelled: 0,
            escalations: 0,
            providers: vec![ProviderFigures {
                provider_id: Uuid::nil(),
                provider_name: "Helping Hands".to_owned(),
                offers: 2,
                accepted: 1,
                declined: 1,
                timed_out: 0,
                arrivals: 1,
                on_time: 1,
                completed: 1,
                ratings: 1,
                rating_sum: 5,
            }],
        };
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let csv = report_csv(day, day.succ_opt().unwrap(), &[station]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let fields = |line: &str| {
            // Commas inside quotes do not separate fields.
            let mut count = 1;
            let mut quoted = false;
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => count += 1,
                    _ => {}
                }
            }
            count
        };
        assert!(
            lines.iter().all(|line| fields(line) == fields(lines[0])),
            "{csv}"
        );
        assert!(lines[1].contains("\"盐田, \"\"东\"\" station\""));
        assert!(lines[1].contains(",3,1,1,33.3,2,1,2,0,0,"), "{}", lines[1]);
        assert!(lines[2].ends_with(",50.0,1,100.0,1,5.00"), "{}", lines[2]);
    }
}
