//! `deaddrop doctor`: runs the library's checks and renders the report, as text for people or
//! as one JSON object.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deaddrop::discovery::doctor::{self, DoctorConfig, Finding, Level, Report};
use deaddrop::protocol::id::PeerId;
use deaddrop::protocol::secret::Passphrase;
use deaddrop::wide::room::{MeetingCheck, WideCheck};

use crate::cli::Common;
use crate::output::{Ui, sanitize};
use crate::{EXIT_PROBLEM, discovery_config, display_name, report_error};

pub fn run(pass: Option<Passphrase>, wait: Duration, common: &Common, ui: &Arc<Ui>) -> ExitCode {
    let invite = match crate::wide::invite_of(common) {
        Ok(i) => i,
        Err(e) => {
            report_error(ui, &format!("{e:#}"));
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
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
    let discovery = cfg.discovery.clone();
    let room_pass = cfg.pass.clone();
    let report = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            let mut report = doctor::run(cfg).await;
            if let Some(invite) = invite {
                let bind = match deaddrop::discovery::resolve(&discovery).await {
                    Ok(scope) => crate::wide::bind_of(&scope),
                    Err(_) => Vec::new(),
                };
                match deaddrop::wide::room::check(
                    &invite,
                    &bind,
                    room_pass.as_ref(),
                    PeerId::random(),
                )
                .await
                {
                    Ok(check) => {
                        report.findings.extend(wide_findings(&check));
                        report.wide = Some(check);
                    }
                    Err(e) => report.findings.push(Finding::new(
                        Level::Problem,
                        format!("cannot check the room beyond the LAN: {e}"),
                        None,
                    )),
                }
            }
            report
        }),
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
    if let Some(w) = &r.wide {
        line(String::new());
        line("Beyond the LAN (the invite's room)".into());
        line(format!("  relay          {}", sanitize(&w.relay, false)));
        if let Some(open) = w.relay_port_open {
            line(format!(
                "  its port       {}",
                if open {
                    "open"
                } else {
                    "closed or unreachable"
                }
            ));
        }
        line(match (w.relay_connected_ms, &w.relay_error) {
            (Some(ms), _) => format!("  connection     made in {ms} ms"),
            (None, Some(e)) => format!("  connection     failed: {}", sanitize(e, false)),
            (None, None) => "  connection     failed".into(),
        });
        line(format!(
            "  meeting point  {}",
            match w.meeting_point {
                MeetingCheck::NotChecked => "not asked",
                MeetingCheck::NoAnswer => "nobody holds it",
                MeetingCheck::Member => "a member holds it (room handshake ok)",
                MeetingCheck::Rejected => "its holder fails the room handshake",
            }
        ));
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

/// What the wide-area check means for the user.
fn wide_findings(w: &WideCheck) -> Vec<Finding> {
    let mut out = Vec::new();
    match (w.relay_connected_ms, w.relay_port_open) {
        (Some(_), _) => out.push(Finding::new(
            Level::Ok,
            format!("the room's relay {} answers", w.relay),
            None,
        )),
        (None, Some(false)) => out.push(Finding::new(
            Level::Problem,
            format!(
                "the room's relay {} does not take connections: members beyond the LAN cannot be found",
                w.relay
            ),
            Some(
                "check that `deaddrop relay` runs there and that its port (TCP and UDP) is open in its host's firewall",
            ),
        )),
        (None, _) => out.push(Finding::new(
            Level::Problem,
            format!(
                "the room's relay {} takes connections, but no relay connection was made ({})",
                w.relay,
                w.relay_error.as_deref().unwrap_or("no answer")
            ),
            Some(
                "check that the invite's relay URL and certificate fingerprint are the ones `deaddrop relay` prints there, and that its UDP port is open too",
            ),
        )),
    }
    match w.meeting_point {
        MeetingCheck::NotChecked if w.relay_connected_ms.is_some() => out.push(Finding::new(
            Level::Info,
            "the room's meeting point was not asked: give the passphrase to check the room handshake there",
            None,
        )),
        MeetingCheck::NotChecked | MeetingCheck::Member => {}
        MeetingCheck::NoAnswer => out.push(Finding::new(
            Level::Info,
            "nobody holds the room's meeting point: no long-running member (`run`, `send-*`) is online beyond the LAN now",
            None,
        )),
        MeetingCheck::Rejected => out.push(Finding::new(
            Level::Problem,
            "whoever holds the room's meeting point fails the room handshake: your passphrase differs from the members', or someone with the invite but not the passphrase holds it",
            Some(
                "check the passphrase; members that met before still find each other (SECURITY.md)",
            ),
        )),
    }
    out
}
