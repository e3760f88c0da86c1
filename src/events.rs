//! Notable events, logged from one place each, so the daemon and `watchdog check` say the same
//! thing in the same words (and a future metric can count the same thing).

use crate::health::State;
use crate::rules::Effect;
pub use crate::rules::Work;

/// Logs the decisions that need no carrying out (state changes, a spent budget, a page with
/// nobody to receive it, a rule held back) and returns `None` for them; hands back the effects that need work.
pub fn log_decision(effect: Effect) -> Option<Work> {
    match effect {
        Effect::StateChanged {
            probe,
            from,
            to,
            reason,
        } => {
            if to == State::Down {
                tracing::warn!(probe = %probe, state = %to, from = %from, reason = %reason, "state changed");
            } else {
                tracing::info!(probe = %probe, state = %to, from = %from, reason = %reason, "state changed");
            }
            None
        }
        Effect::BudgetSpent {
            probe,
            action,
            budget,
        } => {
            tracing::error!(probe = %probe, action = %action, budget = %budget, "remedy budget spent: giving up");
            None
        }
        Effect::NoPager { probe, summary } => {
            tracing::error!(probe = %probe, summary = %summary, "page due, but no rule of this probe names a pager");
            None
        }
        Effect::Held {
            probe,
            actions,
            because,
        } => {
            tracing::info!(probe = %probe, actions = %actions.join(", "), because = %because, "rule held back");
            None
        }
        Effect::Work(work) => Some(work),
    }
}
