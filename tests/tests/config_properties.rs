//! Property tests of config parsing (issue 8, part 5): whatever the text,
//! the controller's and the agent's config parsers answer with a config or
//! an error naming the file (and the key, when a known key has a bad
//! value), never a panic; durations mean what they say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use lockstep_agent::config::AgentConfig;
use lockstep_controller::config::ControllerConfig;
use proptest::prelude::*;

const CONTROLLER: &str = include_str!("../../controller/tests/fixtures/controller_good.toml");
const AGENT: &str = include_str!("../../agent/tests/fixtures/agent_good.toml");

/// `text` with line `at` replaced by `line`.
fn with_line(text: &str, at: usize, line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let i = at % lines.len();
    lines[i] = line;
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_config_or_an_error_naming_the_file(text in "\\PC{0,200}") {
        let path = Path::new("/etc/lockstep/x.toml");
        if let Err(e) = ControllerConfig::parse(&text, path) {
            prop_assert!(e.to_string().contains("/etc/lockstep/x.toml"), "{}", e);
        }
        if let Err(e) = AgentConfig::parse(&text, path) {
            prop_assert!(e.to_string().contains("/etc/lockstep/x.toml"), "{}", e);
        }
    }

    #[test]
    fn a_good_config_with_one_line_garbled_is_handled(at in any::<usize>(), line in "[ -~]{0,40}") {
        let path = Path::new("c.toml");
        if let Err(e) = ControllerConfig::parse(&with_line(CONTROLLER, at, &line), path) {
            prop_assert!(e.to_string().starts_with("config c.toml"), "{}", e);
        }
        if let Err(e) = AgentConfig::parse(&with_line(AGENT, at, &line), path) {
            prop_assert!(e.to_string().starts_with("config c.toml"), "{}", e);
        }
    }

    #[test]
    fn durations_mean_what_they_say(ms in 1u64..1_000_000_000) {
        let text = CONTROLLER.replace("freshness_ttl = \"30s\"", &format!("freshness_ttl = \"{ms}ms\""));
        let config = ControllerConfig::parse(&text, Path::new("c.toml")).unwrap();
        prop_assert_eq!(config.freshness_ttl, Duration::from_millis(ms));
    }

    #[test]
    fn a_bad_value_names_its_key(word in "[a-z]{1,12}") {
        let text = CONTROLLER.replace("freshness_ttl = \"30s\"", &format!("freshness_ttl = \"{word}\""));
        let e = ControllerConfig::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        prop_assert!(e.contains("freshness_ttl"), "{}", e);
    }
}
