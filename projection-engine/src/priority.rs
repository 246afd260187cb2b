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
