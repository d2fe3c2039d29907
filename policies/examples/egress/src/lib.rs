//! Egress allowlist: the inference service connects only to the model
//! registry network on 443 and to loopback.
//!
//! | rule | verdict |
//! |---|---|
//! | 20 | deny + kill: the service connects anywhere else |

#![no_std]

use guardian_policy_sdk::{
    Actions, Egress, EventView, IpAddr, Kind, Policy, StaticRules, Verdict, export_policy,
};

/// Allowed destinations.
pub const ALLOWED: &[Egress] = &[
    Egress {
        net: IpAddr::V4([10, 0, 0, 0]),
        prefix: 8,
        ports: (443, 443),
    },
    Egress {
        net: IpAddr::V4([127, 0, 0, 0]),
        prefix: 8,
        ports: (0, 65535),
    },
    Egress {
        net: IpAddr::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        prefix: 128,
        ports: (0, 65535),
    },
];

/// The policy (stateless).
pub struct EgressAllowlist;

impl Policy for EgressAllowlist {
    const INIT: Self = EgressAllowlist;

    fn static_rules() -> StaticRules<'static> {
        StaticRules {
            egress: Some(ALLOWED),
            ..StaticRules::default()
        }
    }

    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
        if event.kind() != Kind::Connect || !event.service() {
            return Verdict::ALLOW;
        }
        match event.connect() {
            Some((addr, port)) if !ALLOWED.iter().any(|e| e.contains(&addr, port)) => {
                Verdict::deny(20).with(Actions::KILL)
            }
            _ => Verdict::ALLOW,
        }
    }
}

export_policy!(EgressAllowlist);
