//! `mxgate_config_info{hash}`: the hash of the configuration in force ([`config_hash`]),
//! value 1. Rendered by the endpoint itself rather than through the recorder, which cannot
//! remove a series: after a reload only the new hash is exported, so counting the distinct
//! hashes across instances finds nodes running a different configuration.
//!
//! [`config_hash`]: crate::config::hash::config_hash

use std::sync::Mutex;

/// Configuration info, value 1: `{hash}`.
pub(crate) const CONFIG_INFO: &str = "mxgate_config_info";

/// The hash in force. One process serves one configuration, hence global (like the recorder).
static HASH: Mutex<Option<String>> = Mutex::new(None);

/// Sets the hash exported from now on (at start-up and after each successful reload).
pub(crate) fn set(hash: &str) {
    *HASH.lock().unwrap_or_else(|e| e.into_inner()) = Some(hash.to_string());
}

/// The exposition lines, empty before a configuration was applied.
pub(crate) fn render() -> String {
    match HASH.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
        Some(hash) => format!(
            "# HELP {CONFIG_INFO} Hash of the loaded, validated configuration (value 1)\n# TYPE {CONFIG_INFO} gauge\n{CONFIG_INFO}{{hash=\"{hash}\"}} 1\n"
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_the_latest_hash() {
        set("0123456789abcdef");
        set("fedcba9876543210");
        let text = render();
        assert!(text.ends_with("mxgate_config_info{hash=\"fedcba9876543210\"} 1\n"));
        assert_eq!(text.matches("mxgate_config_info{").count(), 1);
    }
}
