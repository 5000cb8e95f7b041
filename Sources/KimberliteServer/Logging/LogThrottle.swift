/// Lets a repeating log line through at most once per `interval`, so a
/// state that persists (a full disk, a peer sending garbage) is logged
/// steadily instead of flooding the journal. One per line; not thread-safe.
struct LogThrottle {
    let interval: Duration
    private var lastAllowed: ContinuousClock.Instant? = nil

    init(every interval: Duration) { self.interval = interval }

    /// True when the line may be logged now (and starts a new interval).
    mutating func allow(now: ContinuousClock.Instant = .now) -> Bool {
        if let lastAllowed, now - lastAllowed < interval { return false }
        lastAllowed = now
        return true
    }
}
