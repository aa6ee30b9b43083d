//! Shared helpers for Carebell's benchmarks: timing and reporting. Benchmarks print figures
//! (JSON and a markdown table); they never fail a build because a machine was slow.

use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Runs `operation` `iterations` times and returns operations per second.
pub fn rate(iterations: u64, mut operation: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        operation();
    }
    iterations as f64 / start.elapsed().as_secs_f64()
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Prints the figures as one JSON object and as a markdown table.
pub fn report(title: &str, figures: &[Figure]) {
    let json: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|figure| {
            (
                figure.name.clone(),
                serde_json::json!({ "value": figure.value, "unit": figure.unit }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "benchmark": title, "figures": json })
    );
    println!();
    println!("| {title} | value | unit |");
    println!("|---|---:|---|");
    for figure in figures {
        println!(
            "| {} | {:.3} | {} |",
            figure.name, figure.value, figure.unit
        );
    }
    println!();
}
