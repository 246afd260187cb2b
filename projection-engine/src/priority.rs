//! Background work (reports, rebuilds) yields the CPU to the threads that serve queries.

/// Lowers the calling thread to the lowest priority of its scheduling policy (niceness 19 under
/// Linux's default policy). Threads it starts afterwards, such as a Kafka client's, inherit it.
pub fn lowest() {
    if let Err(error) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(?error, "could not lower the thread's priority");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The calling thread's niceness, from `/proc` (field 19 of its `stat`).
    fn niceness() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(16)?.parse().ok()
    }

    #[test]
    fn the_lowest_priority_is_niceness_19_and_threads_started_after_inherit_it() {
        let (own, inherited) = std::thread::spawn(|| {
            super::lowest();
            let inherited = std::thread::spawn(niceness).join().unwrap();
            (niceness(), inherited)
        })
        .join()
        .unwrap();
        if own.is_some() {
            assert_eq!(own, Some(19));
            assert_eq!(inherited, Some(19));
        }
    }
}
