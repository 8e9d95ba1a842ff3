#![no_main]
//! File and folder names from peers.
use deaddrop::storage::names::{MAX_COMPONENT, sanitize_component, sanitize_relative};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let s = sanitize_component(name);
    assert!(!s.is_empty() && s != "." && s != "..");
    assert!(s.len() <= MAX_COMPONENT);
    assert!(!s.contains(['/', '\\', ':']) && !s.chars().any(char::is_control));
    if let Ok(parts) = sanitize_relative(name) {
        assert!(parts.iter().all(|p| p != ".." && p != "." && !p.is_empty()));
    }
});
