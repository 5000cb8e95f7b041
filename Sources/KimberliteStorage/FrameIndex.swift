/// Where the frames of one journal segment start, kept sparse so that the
/// journal's memory does not grow with the number of entries it holds: the
/// start of frame 0, then of the first frame at least `strideFrames` frames
/// or `strideBytes` bytes after the previous sampled one. Every other frame
/// is found by walking frame headers (8 bytes each) from the sampled frame
/// before it, which reads fewer than `strideFrames` headers.
///
/// A segment of 64 MiB holds at most about 64 MiB / 256 KiB + frames / 64
/// samples of 16 bytes: 4 KiB for 16,000 entries of 4 KiB, where a start
/// offset per frame took 128 KiB (and 8 bytes per entry for ever).
struct FrameIndex: Sendable {
    static let strideFrames = 64
    static let strideBytes = 256 << 10

    /// Frames in the segment.
    private(set) var count = 0
    /// Sampled frames, ascending: `(frame, offset)`, frame 0 first.
    private var samples: [(frame: Int, offset: Int)] = []

    var isEmpty: Bool { count == 0 }

    /// Records the next frame, which starts at byte `offset` of the segment.
    mutating func append(frameAt offset: Int) {
        if let last = samples.last, count - last.frame < Self.strideFrames, offset - last.offset < Self.strideBytes {
            count += 1
            return
        }
        samples.append((count, offset))
        count += 1
    }

    /// Keeps the first `frames` frames (a rollback or a truncation).
    mutating func keepFirst(_ frames: Int) {
        precondition(frames >= 0 && frames <= count, "keeps frames the segment holds")
        count = frames
        while let last = samples.last, last.frame >= frames { samples.removeLast() }
    }

    /// The sampled frame at or before `frame` (0 ≤ frame < count).
    func sample(atOrBefore frame: Int) -> (frame: Int, offset: Int) {
        precondition(frame >= 0 && frame < count, "frame \(frame) is in the segment (\(count) frames)")
        var low = 0, high = samples.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if samples[middle].frame <= frame { low = middle } else { high = middle - 1 }
        }
        return samples[low]
    }
}
