//! Backups: schedules declared in the repo. The runners, stores and restore
//! land with the backup issue; today this owns the schedule grammar, which
//! `check` uses to validate backup jobs.

pub mod schedule;
