//! Durable-queue jobs (feature `queue`) on both stores (a SQLite file; a private
//! redis-server): worker processes sharing one queue, capacity-aware claiming, the outcome
//! mapping and retries, hostile tasks and failing stores, graceful stop and hand-back, orphan
//! re-runs after a SIGKILL. One module per subject; `fixtures` holds what they share.
//!
//! No libtest harness: this binary is also the worker processes' program (`LP_QUEUE_ROLE`).
//! `LPQ_TRACE=apalis_core=debug,leasepool::queue=debug` prints apalis' and the worker's logs.

#[path = "../../../tests/common/mod.rs"]
mod common;

mod claiming;
mod contract;
mod deferrals;
mod failures;
mod fixtures;
mod fleet;
mod hostile;
mod lifecycle;
mod outcomes;
mod retries;
mod settings;

use std::time::Duration;

use fixtures::{process_jobs, stop_redis, worker_role, Kind, ROLE};

/// `tests![m::a, n::b]`: the async fns (no arguments) as named tests, named by their paths.
macro_rules! tests {
    ($($($seg:ident)::+),* $(,)?) => {
        vec![$((
            stringify!($($seg)::+).replace(' ', ""),
            Box::new(|| Box::pin($($seg)::+()) as common::LocalTest)
                as Box<dyn FnOnce() -> common::LocalTest + Send>,
        )),*]
    };
}

// ---- the runner -------------------------------------------------------------------------------

fn main() {
    leasepool::process::init(process_jobs());
    if std::env::var_os("LPQ_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LPQ_TRACE"))
            .with_writer(std::io::stderr)
            .init();
    } else if std::env::var(ROLE).is_err() {
        fixtures::keep_queue_logs();
    }
    if std::env::var(ROLE).as_deref() == Ok("work") {
        worker_role();
    }
    let mut all: Vec<common::NamedTest> = Vec::new();
    // In-process tests run against both stores: `module::test::sqlite`, `module::test::redis`.
    macro_rules! each_store {
        ($($($seg:ident)::+),* $(,)?) => {$(
            for kind in [Kind::Sqlite, Kind::Redis] {
                let name = format!("{}::{kind:?}", stringify!($($seg)::+).replace(' ', "")).to_lowercase();
                all.push((name, Box::new(move || Box::pin($($seg)::+(kind)))));
            }
        )*};
    }
    each_store![
        contract::the_storage_layout_we_rely_on_is_apalis_own,
        claiming::claims_stay_within_capacity_plus_prefetch,
        claiming::a_busy_manager_claims_nothing_and_leaves_tasks_for_others,
        claiming::overload_puts_the_task_back_without_counting_an_attempt,
        claiming::an_idle_worker_takes_tasks_pushed_later,
        outcomes::outcomes_map_to_the_queue,
        outcomes::counts_add_up_while_tasks_move,
        outcomes::process_jobs_from_the_queue_retry_a_crash_in_a_child,
        outcomes::a_task_killed_at_hard_expiry_is_retried,
        outcomes::a_task_that_does_not_decode_fails_alone,
        deferrals::a_deferral_taken_first_by_another_worker_costs_no_attempt,
        lifecycle::stop_lets_running_tasks_finish_and_hands_back_the_rest,
        lifecycle::start_then_stop_at_once_is_prompt_and_leaves_nothing_claimed,
        lifecycle::a_stopped_manager_pauses_claiming_and_loses_nothing,
        lifecycle::start_stop_churn_loses_and_repeats_nothing,
        lifecycle::start_while_a_stop_is_under_way_is_refused,
        settings::bad_settings_are_refused_by_name,
        hostile::payloads_a_worker_could_not_read_are_refused_at_push,
        hostile::stored_tasks_apalis_cannot_read_fail_alone,
        hostile::hostile_payloads_never_stall_a_queue,
        outcomes::a_process_job_whose_output_cannot_be_encoded_fails_for_good,
        outcomes::jobs_run_with_their_workers_state,
        settings::attempts_are_what_every_store_holds,
        retries::failed_attempts_wait_as_the_policy_says,
        retries::a_task_gets_every_attempt_it_was_given,
        retries::a_pushed_policy_wins_over_the_workers,
        retries::failed_attempts_are_logged,
        failures::stop_is_bounded_while_the_store_is_locked,
        failures::every_duration_setting_is_taken_or_refused_by_name,
        failures::a_panic_inside_apalis_replaces_the_worker,
        fleet::a_job_that_kills_its_process_runs_at_most_max_attempts,
    ];
    all.extend(tests![
        deferrals::a_dead_workers_deferred_task_runs_again,
        deferrals::a_stale_owed_mark_gives_no_free_attempt,
        deferrals::a_hand_back_of_a_task_taken_from_its_worker_marks_nothing,
        fleet::two_worker_processes_do_2000_tasks_exactly_once,
        fleet::the_bigger_instance_takes_its_fair_share,
        fleet::a_killed_instance_tasks_are_run_by_another_after_the_orphan_timeout,
        fleet::redis_three_workers_share_10000_tasks_and_survive_a_sigkill,
        fleet::a_large_due_backlog_on_redis_does_not_stop_fetching,
        retries::a_retry_left_unsettled_by_a_dead_worker_is_revived,
        failures::a_replaced_queue_file_is_followed,
        failures::planner_statistics_follow_the_table,
    ]);
    let ran = common::run_named(
        all,
        Duration::from_secs(120),
        |test| actix_rt::System::new().block_on(test),
        |_| {},
        |_| {},
    );
    stop_redis();
    ran.finish();
}
