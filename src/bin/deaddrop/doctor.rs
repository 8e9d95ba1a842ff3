//! `deaddrop doctor`: runs the library's checks and renders the report, as text for people or
//! as one JSON object.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deaddrop::discovery::doctor::{self, DoctorConfig, Level, Report};
use deaddrop::protocol::secret::Passphrase;

use crate::cli::Common;
use crate::output::{Ui, sanitize};
use crate::{EXIT_PROBLEM, discovery_config, display_name, report_error};

pub fn run(pass: Option<Passphrase>, wait: Duration, common: &Common, ui: &Arc<Ui>) -> ExitCode {
    let cfg = DoctorConfig {
        discovery: discovery_config(common),
        wait,
        pass,
        name: display_name(common),
    };
    if !ui.json() {
        ui.err(&format!(
            "Checking interfaces and listening on every path for {}...",
            deaddrop::units::format_duration(wait)
        ));
    }
    let report = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(doctor::run(cfg)),
        Err(e) => {
            report_error(ui, &format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if ui.json() {
        ui.out(&serde_json::to_string(&report).expect("a report serializes"));
    } else {
        ui.out(&render(&report));
    }
    let problem = report.findings.iter().any(|f| f.level == Level::Problem);
    ExitCode::from(if problem { EXIT_PROBLEM } else { 0 })
}

/// The report for people. Everything from peers is sanitized (ids and addresses are ours to
/// print, but a hostile interface name is not impossible).
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("This is {} (a random id, new each run).", r.me));
    line(String::new());
    line("Interfaces".into());
    for i in &r.interfaces {
        let addrs = if i.addresses.is_empty() {
            "no address".to_owned()
        } else {
            i.addresses.join(", ")
        };
        let status = if i.used {
            let mut paths = Vec::new();
            if !i.broadcast.is_empty() {
                paths.push(format!("broadcast to {}", i.broadcast.join(", ")));
            }
            match (i.mdns_ipv4, i.mdns_ipv6) {
                (true, true) => paths.push("mDNS over IPv4 and IPv6".into()),
                (true, false) => paths.push("mDNS over IPv4".into()),
                (false, true) => paths.push("mDNS over IPv6".into()),
                (false, false) => {}
            }
            if paths.is_empty() {
                "used (unicast only)".to_owned()
            } else {
                format!("used: {}", paths.join("; "))
            }
        } else {
            format!("not used: {}", i.left_out.as_deref().unwrap_or("left out"))
        };
        line(format!("  {:<10} {addrs}", sanitize(&i.name, false)));
        line(format!("  {:<10} {status}", ""));
    }
    for route in &r.default_route {
        line(format!(
            "  default route via {}{}",
            sanitize(&route.interface, false),
            route
                .gateway
                .as_ref()
                .map(|g| format!(" (gateway {g})"))
                .unwrap_or_default()
        ));
    }
    line(String::new());
    line(format!(
        "Heard in {}",
        deaddrop::units::format_duration(Duration::from_millis(r.wait_ms))
    ));
    if r.seen.is_empty() {
        line("  nobody".into());
    }
    for p in &r.seen {
        let role = match p.role {
            doctor::Role::Holder => "holder",
            doctor::Role::Doctor => "doctor",
            doctor::Role::Asker => "receiver",
        };
        line(format!(
            "  {} {:<8} {} on {}{}",
            p.id,
            role,
            p.addresses.join(", "),
            p.paths.join(", "),
            p.interface
                .as_ref()
                .map(|i| format!(" (via {})", sanitize(i, false)))
                .unwrap_or_default()
        ));
        if let Some(h) = &p.handshake {
            line(format!("           room handshake: {h}"));
        }
    }
    line(String::new());
    line("Verdict".into());
    if r.findings.is_empty() {
        line("  nothing to report".into());
    }
    for f in &r.findings {
        let mark = match f.level {
            Level::Ok => "ok",
            Level::Info => "note",
            Level::Problem => "PROBLEM",
        };
        line(format!("  {mark}: {}", f.text));
        if let Some(fix) = &f.fix {
            line(format!("    what to do: {fix}"));
        }
    }
    out.trim_end().to_owned()
}
