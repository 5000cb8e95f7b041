import CSQLite
import Foundation

/// The entry time seen by `kmb_timestamp()` / `kmb_datetime()` on one
/// connection. Set by the apply thread around each entry; nil elsewhere,
/// where the functions fail with `unavailableReason`.
final class EntryClock {
    var timestampMs: Int64?
    let unavailableReason: String

    init(unavailableReason: String) {
        self.unavailableReason = unavailableReason
    }
}

/// Replacements for SQLite's nondeterministic built-ins, registered on every
/// connection under the built-in names (an application-defined function
/// hides the built-in of the same name). random(), randomblob(),
/// total_changes() and CURRENT_TIME/CURRENT_DATE/CURRENT_TIMESTAMP always
/// fail; date(), time(), datetime(), julianday(), unixepoch() and strftime()
/// compute explicit times and fail on 'now', on no time argument and on the
/// host-dependent 'localtime'/'utc' modifiers.
///
/// Supported time values: 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS[.SSS]]' (space
/// or 'T'), 'HH:MM[:SS[.SSS]]' (on 2000-01-01), an optional 'Z' or '±HH:MM'
/// suffix, and numbers (julian day; unix seconds with 'unixepoch'; 'auto').
/// Modifiers: '±N days|hours|minutes|seconds|months|years', 'start of
/// day|month|year', 'weekday N', 'unixepoch', 'julianday', 'auto'. Anything
/// else gives NULL, like SQLite.
enum DeterministicFunctions {
    /// Registers the replacements and `kmb_timestamp()`/`kmb_datetime()` on
    /// `connection`, reading entry time from `clock`.
    /// - Throws: `SQLiteError` if SQLite refuses a registration.
    static func install(on connection: SQLiteConnection, clock: EntryClock) throws {
        let pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS
        for (name, arity, shown) in [("random", 0, "random()"), ("randomblob", 1, "randomblob()"),
                                     ("total_changes", 0, "total_changes()"),
                                     ("current_time", 0, "CURRENT_TIME"), ("current_date", 0, "CURRENT_DATE"),
                                     ("current_timestamp", 0, "CURRENT_TIMESTAMP")] {
            try register(connection, name: name, arity: Int32(arity), flags: pure,
                         context: FunctionContext(kind: .refuse("nondeterministic function \(shown) is not allowed")))
        }
        for function in DateFunction.allCases {
            try register(connection, name: function.rawValue, arity: -1, flags: pure,
                         context: FunctionContext(kind: .date(function)))
        }
        // Not DETERMINISTIC: the value changes from entry to entry, so SQLite
        // must keep it out of indexes, CHECK constraints and generated columns.
        let perEntry = SQLITE_UTF8 | SQLITE_INNOCUOUS
        try register(connection, name: "kmb_timestamp", arity: 0, flags: perEntry,
                     context: FunctionContext(kind: .kmbTimestamp, clock: clock))
        try register(connection, name: "kmb_datetime", arity: 0, flags: perEntry,
                     context: FunctionContext(kind: .kmbDatetime, clock: clock))
    }

    private static func register(_ connection: SQLiteConnection, name: String, arity: Int32, flags: Int32,
                                 context: FunctionContext) throws {
        let pointer = Unmanaged.passRetained(context).toOpaque()
        // On failure SQLite calls the destructor itself, so no release here.
        let rc = sqlite3_create_function_v2(
            connection.db, name, arity, flags, pointer,
            { ctx, argc, argv in
                guard let ctx, let user = sqlite3_user_data(ctx) else { return }
                let context = Unmanaged<FunctionContext>.fromOpaque(user).takeUnretainedValue()
                context.call(ctx, Int(argc), argv)
            },
            nil, nil,
            { user in
                if let user { Unmanaged<FunctionContext>.fromOpaque(user).release() }
            })
        guard rc == SQLITE_OK else { throw connection.lastError(code: rc) }
    }
}

/// The date/time built-ins we replace, by SQL name.
enum DateFunction: String, CaseIterable {
    case date, time, datetime, julianday, unixepoch, strftime
}

/// What one registered function does; the C callback dispatches on it.
private final class FunctionContext {
    enum Kind {
        case refuse(String)
        case date(DateFunction)
        case kmbTimestamp
        case kmbDatetime
    }

    let kind: Kind
    let clock: EntryClock?

    init(kind: Kind, clock: EntryClock? = nil) {
        self.kind = kind
        self.clock = clock
    }

    func call(_ ctx: OpaquePointer, _ argc: Int, _ argv: UnsafeMutablePointer<OpaquePointer?>?) {
        switch kind {
        case .refuse(let message):
            sqlite3_result_error(ctx, message, -1)
        case .kmbTimestamp, .kmbDatetime:
            guard let timestamp = clock?.timestampMs else {
                sqlite3_result_error(ctx, clock?.unavailableReason ?? "no entry time here", -1)
                return
            }
            if case .kmbTimestamp = kind {
                sqlite3_result_int64(ctx, timestamp)
                return
            }
            let (jd, overflow) = timestamp.addingReportingOverflow(TimeMath.unixEpochJD)
            guard !overflow, TimeMath.isValid(jd) else {
                sqlite3_result_error(ctx, "kmb_datetime(): entry time \(timestamp) ms is outside years 0000-9999", -1)
                return
            }
            let c = TimeMath.civil(jd)
            setText(ctx, TimeMath.dateText(c) + " " + TimeMath.timeText(c) + "." + TimeMath.pad(c.millis % 1000, 3))
        case .date(let function):
            let args = (0..<argc).map { argv![$0] }
            switch DateEvaluator.evaluate(function, args) {
            case .failure(let message): sqlite3_result_error(ctx, message, -1)
            case .null: sqlite3_result_null(ctx)
            case .text(let text): setText(ctx, text)
            case .integer(let value): sqlite3_result_int64(ctx, value)
            case .real(let value): sqlite3_result_double(ctx, value)
            }
        }
    }

    private func setText(_ ctx: OpaquePointer, _ text: String) {
        sqlite3_result_text(ctx, text, -1, sqliteTransient())
    }
}

/// A broken-down time. `millis` counts milliseconds within the minute.
struct CivilTime: Equatable {
    var year: Int, month: Int, day: Int
    var hour: Int = 0, minute: Int = 0, millis: Int = 0
}

/// Julian-day arithmetic in milliseconds, the representation SQLite's date
/// functions use (Meeus, "Astronomical Algorithms", ch. 7).
enum TimeMath {
    static let dayMs: Int64 = 86_400_000
    /// 1970-01-01 00:00:00 as julian-day milliseconds (JD 2440587.5).
    static let unixEpochJD: Int64 = 210_866_760_000_000
    /// 9999-12-31 23:59:59.999; julian day 0 is the lower bound.
    static let maxJD: Int64 = 464_269_060_799_999

    static func isValid(_ jd: Int64) -> Bool { jd >= 0 && jd <= maxJD }

    /// Julian-day milliseconds of `c`, or nil for a year outside -4713...9999.
    /// Days past the month's end roll over, as in SQLite.
    static func julian(_ c: CivilTime) -> Int64? {
        guard c.year >= -4713, c.year <= 9999 else { return nil }
        var y = c.year, m = c.month
        if m <= 2 { y -= 1; m += 12 }
        let a = y / 100
        let b = 2 - a + a / 4
        let x1 = 36525 * (y + 4716) / 100
        let x2 = 306001 * (m + 1) / 10000
        // (x1 + x2 + day + b - 1524.5) days, in exact integer milliseconds.
        let dayStart = Int64(x1 + x2 + c.day + b) * dayMs - 131_716_800_000
        return dayStart + Int64(c.hour) * 3_600_000 + Int64(c.minute) * 60_000 + Int64(c.millis)
    }

    static func civil(_ jd: Int64) -> CivilTime {
        let z = Int((jd + 43_200_000) / dayMs)
        var a = Int((Double(z) - 1867216.25) / 36524.25)
        a = z + 1 + a - a / 4
        let b = a + 1524
        let c = Int((Double(b) - 122.1) / 365.25)
        let d = (36525 * (c & 32767)) / 100
        let e = Int(Double(b - d) / 30.6001)
        let x1 = Int(30.6001 * Double(e))
        let month = e < 14 ? e - 1 : e - 13
        let msOfDay = Int((jd + 43_200_000) % dayMs)
        return CivilTime(year: month > 2 ? c - 4716 : c - 4715, month: month, day: b - d - x1,
                         hour: msOfDay / 3_600_000, minute: (msOfDay / 60_000) % 60, millis: msOfDay % 60_000)
    }

    static func pad(_ value: Int, _ width: Int) -> String {
        let digits = String(value.magnitude)
        let padded = digits.count < width ? String(repeating: "0", count: width - digits.count) + digits : digits
        return value < 0 ? "-" + padded : padded
    }

    static func dateText(_ c: CivilTime) -> String {
        pad(c.year, 4) + "-" + pad(c.month, 2) + "-" + pad(c.day, 2)
    }

    static func timeText(_ c: CivilTime) -> String {
        pad(c.hour, 2) + ":" + pad(c.minute, 2) + ":" + pad(c.millis / 1000, 2)
    }
}

/// Evaluates the replaced date/time functions on SQLite argument values.
enum DateEvaluator {
    enum Result: Equatable {
        case failure(String), null, text(String), integer(Int64), real(Double)
    }

    /// A time value after parsing: a julian-day instant, a bare number whose
    /// meaning the first modifier may still choose, or nothing valid.
    private struct Moment {
        var jd: Int64?
        var rawNumber: Double?
    }

    static func evaluate(_ function: DateFunction, _ args: [OpaquePointer?]) -> Result {
        var args = args
        var format: String?
        if function == .strftime {
            guard args.count >= 2 else {
                return .failure("nondeterministic function strftime() with no time argument is not allowed")
            }
            guard let text = textArgument(args[0]) else { return .null }
            format = text
            args.removeFirst()
        }
        guard let timeArg = args.first else {
            return .failure("nondeterministic function \(function.rawValue)() is not allowed")
        }
        var moment: Moment
        switch sqlite3_value_type(timeArg) {
        case SQLITE_NULL, SQLITE_BLOB:
            return .null
        case SQLITE_INTEGER, SQLITE_FLOAT:
            moment = rawNumber(sqlite3_value_double(timeArg))
        default:
            let text = textArgument(timeArg) ?? ""
            if text.lowercased() == "now" {
                return .failure("nondeterministic function \(function.rawValue)('now') is not allowed")
            }
            guard let parsed = parse(text) else { return .null }
            moment = parsed
        }
        for (index, modifierArg) in args.dropFirst().enumerated() {
            guard let modifier = textArgument(modifierArg) else { return .null }
            switch apply(modifier, at: index, to: &moment) {
            case .ok: continue
            case .invalid: return .null
            case .refused(let name):
                return .failure("nondeterministic modifier '\(name)' in \(function.rawValue)() is not allowed")
            }
        }
        guard let jd = moment.jd, TimeMath.isValid(jd) else { return .null }
        let c = TimeMath.civil(jd)
        switch function {
        case .date: return .text(TimeMath.dateText(c))
        case .time: return .text(TimeMath.timeText(c))
        case .datetime: return .text(TimeMath.dateText(c) + " " + TimeMath.timeText(c))
        case .julianday: return .real(Double(jd) / Double(TimeMath.dayMs))
        case .unixepoch: return .integer(jd / 1000 - TimeMath.unixEpochJD / 1000)  // floor, as SQLite 3.40
        case .strftime: return strftime(format ?? "", jd: jd, c: c)
        }
    }

    private static func textArgument(_ value: OpaquePointer?) -> String? {
        guard sqlite3_value_type(value) != SQLITE_NULL, let text = sqlite3_value_text(value) else { return nil }
        let count = Int(sqlite3_value_bytes(value))
        return String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self)
    }

    private static func rawNumber(_ r: Double) -> Moment {
        // A number is a julian day unless a 'unixepoch'/'auto' modifier says otherwise.
        let jd: Int64? = (r >= 0 && r < 5_373_484.5) ? Int64(r * 86_400_000 + 0.5) : nil
        return Moment(jd: jd, rawNumber: r)
    }

    /// Parses a time string; nil when it is not one of the supported forms.
    private static func parse(_ text: String) -> Moment? {
        if let number = parseNumber(text) { return rawNumber(number) }
        var scanner = ByteScanner(Array(text.utf8))
        var c = CivilTime(year: 2000, month: 1, day: 1)
        if let date = scanner.date() {
            c = date
            scanner.skip { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "T") || $0 == 9 || $0 == 10 || $0 == 13 }
            if scanner.atEnd { return TimeMath.julian(c).map { Moment(jd: $0) } }
        }
        guard let (hour, minute, millis) = scanner.time() else { return nil }
        c.hour = hour; c.minute = minute; c.millis = millis
        scanner.skipSpaces()
        let zoneMinutes = scanner.zone()
        guard let zoneMinutes else { return nil }
        scanner.skipSpaces()
        guard scanner.atEnd, let jd = TimeMath.julian(c) else { return nil }
        return Moment(jd: jd - Int64(zoneMinutes) * 60_000)
    }

    /// A decimal number (optional sign, digits, fraction, exponent), with
    /// surrounding spaces; nil otherwise. Hex, "inf" and "nan" are not numbers here.
    static func parseNumber(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var sawDigit = false
        for (i, ch) in trimmed.utf8.enumerated() {
            switch ch {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): sawDigit = true
            case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): continue
            case UInt8(ascii: "+"), UInt8(ascii: "-"):
                if i != 0 {
                    let previous = Array(trimmed.utf8)[i - 1]
                    guard previous == UInt8(ascii: "e") || previous == UInt8(ascii: "E") else { return nil }
                }
            default: return nil
            }
        }
        guard sawDigit else { return nil }
        return Double(trimmed)
    }

    private enum ModifierResult { case ok, invalid, refused(String) }

    private static func apply(_ raw: String, at index: Int, to moment: inout Moment) -> ModifierResult {
        let modifier = raw.lowercased().trimmingCharacters(in: .whitespaces)
        let rawNumber = moment.rawNumber
        // Only a first modifier may reinterpret a bare number.
        moment.rawNumber = nil
        switch modifier {
        case "localtime", "utc":
            return .refused(modifier)
        case "unixepoch":
            guard index == 0, let r = rawNumber else { return .invalid }
            let ms = r * 1000 + Double(TimeMath.unixEpochJD)
            guard ms >= 0, ms < Double(TimeMath.maxJD + 1) else { return .invalid }
            moment.jd = Int64(ms + 0.5)
            return .ok
        case "julianday":
            guard index == 0, rawNumber != nil, moment.jd != nil else { return .invalid }
            return .ok
        case "auto":
            guard index == 0, let r = rawNumber else { return .invalid }
            if moment.jd != nil { return .ok }
            let ms = r * 1000 + Double(TimeMath.unixEpochJD)
            guard ms >= 0, ms < Double(TimeMath.maxJD + 1) else { return .invalid }
            moment.jd = Int64(ms + 0.5)
            return .ok
        default:
            break
        }
        guard let jd = moment.jd else { return .invalid }
        if modifier.hasPrefix("start of ") {
            var c = TimeMath.civil(jd)
            c.hour = 0; c.minute = 0; c.millis = 0
            switch modifier.dropFirst("start of ".count) {
            case "day": break
            case "month": c.day = 1
            case "year": c.day = 1; c.month = 1
            default: return .invalid
            }
            moment.jd = TimeMath.julian(c)
            return moment.jd == nil ? .invalid : .ok
        }
        if modifier.hasPrefix("weekday ") {
            guard let n = parseNumber(String(modifier.dropFirst("weekday ".count))),
                  n >= 0, n < 7, n == n.rounded(.towardZero) else { return .invalid }
            var z = ((jd + 129_600_000) / TimeMath.dayMs) % 7
            if z > Int64(n) { z -= 7 }
            moment.jd = jd + (Int64(n) - z) * TimeMath.dayMs
            return .ok
        }
        // "±N unit" with an optional plural "s".
        let parts = modifier.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, let amount = parseNumber(String(parts[0])), amount.isFinite else { return .invalid }
        var unit = String(parts[1])
        if unit.hasSuffix("s") { unit.removeLast() }
        let rounder = amount < 0 ? -0.5 : 0.5
        var fraction = amount
        var next = jd
        let scaleMs: Double
        switch unit {
        case "second": scaleMs = 1000
        case "minute": scaleMs = 60_000
        case "hour": scaleMs = 3_600_000
        case "day": scaleMs = 86_400_000
        case "month", "year":
            guard abs(amount) < 1_000_000 else { return .invalid }
            let whole = Int(amount.rounded(.towardZero))
            fraction = amount - Double(whole)
            var c = TimeMath.civil(jd)
            if unit == "month" {
                c.month += whole
                let carry = c.month > 0 ? (c.month - 1) / 12 : (c.month - 12) / 12
                c.year += carry
                c.month -= carry * 12
                scaleMs = 30 * 86_400_000
            } else {
                c.year += whole
                scaleMs = 365 * 86_400_000
            }
            guard let rebuilt = TimeMath.julian(c) else { return .invalid }
            next = rebuilt
        default:
            return .invalid
        }
        let delta = fraction * scaleMs + rounder
        guard abs(delta) < Double(TimeMath.maxJD) * 2 else { return .invalid }
        moment.jd = next + Int64(delta)
        guard TimeMath.isValid(moment.jd!) else { return .invalid }
        return .ok
    }

    /// SQLite's strftime subset: %d %f %H %j %J %m %M %s %S %w %W %Y %%.
    /// Any other conversion gives NULL, as SQLite does.
    private static func strftime(_ format: String, jd: Int64, c: CivilTime) -> Result {
        var out = ""
        var chars = format.makeIterator()
        while let ch = chars.next() {
            guard ch == "%" else { out.append(ch); continue }
            guard let conversion = chars.next() else { return .null }
            switch conversion {
            case "d": out += TimeMath.pad(c.day, 2)
            case "f": out += TimeMath.pad(c.millis / 1000, 2) + "." + TimeMath.pad(c.millis % 1000, 3)
            case "H": out += TimeMath.pad(c.hour, 2)
            case "m": out += TimeMath.pad(c.month, 2)
            case "M": out += TimeMath.pad(c.minute, 2)
            case "S": out += TimeMath.pad(c.millis / 1000, 2)
            case "Y": out += TimeMath.pad(c.year, 4)
            case "s": out += String(jd / 1000 - TimeMath.unixEpochJD / 1000)
            case "J": out += String(format: "%.16g", Double(jd) / Double(TimeMath.dayMs))
            case "w": out += String((jd + 129_600_000) / TimeMath.dayMs % 7)
            case "j", "W":
                // January 1st at the same time of day, so the difference is whole days.
                let yearStart = TimeMath.julian(CivilTime(year: c.year, month: 1, day: 1, hour: c.hour,
                                                          minute: c.minute, millis: c.millis)) ?? jd
                let dayOfYear = Int((jd - yearStart + 43_200_000) / TimeMath.dayMs)
                if conversion == "j" {
                    out += TimeMath.pad(dayOfYear + 1, 3)
                } else {
                    let weekday = Int((jd + 43_200_000) / TimeMath.dayMs % 7)  // 0 = Monday
                    out += TimeMath.pad((dayOfYear + 7 - weekday) / 7, 2)
                }
            case "%": out += "%"
            default: return .null
            }
        }
        return .text(out)
    }
}

/// A cursor over the bytes of a time string.
private struct ByteScanner {
    let bytes: [UInt8]
    var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }

    func peek(_ offset: Int = 0) -> UInt8? {
        index + offset < bytes.count ? bytes[index + offset] : nil
    }

    mutating func skip(while predicate: (UInt8) -> Bool) {
        while let b = peek(), predicate(b) { index += 1 }
    }

    mutating func skipSpaces() { skip { $0 == 32 || $0 == 9 || $0 == 10 || $0 == 13 } }

    /// Exactly `count` decimal digits within `range`.
    mutating func digits(_ count: Int, _ range: ClosedRange<Int>) -> Int? {
        var value = 0
        for i in 0..<count {
            guard let b = peek(i), b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(b - UInt8(ascii: "0"))
        }
        guard range.contains(value) else { return nil }
        index += count
        return value
    }

    mutating func expect(_ ch: Character) -> Bool {
        guard peek() == ch.asciiValue else { return false }
        index += 1
        return true
    }

    /// `[-]YYYY-MM-DD`; leaves the cursor unmoved on failure.
    mutating func date() -> CivilTime? {
        let start = index
        let negative = expect("-")
        guard let year = digits(4, 0...9999), expect("-"), let month = digits(2, 1...12), expect("-"),
              let day = digits(2, 1...31) else {
            index = start
            return nil
        }
        return CivilTime(year: negative ? -year : year, month: month, day: day)
    }

    /// `HH:MM[:SS[.fff…]]` as (hour, minute, milliseconds within the minute);
    /// fractions beyond milliseconds are truncated, as SQLite does.
    mutating func time() -> (Int, Int, Int)? {
        guard let hour = digits(2, 0...24), expect(":"), let minute = digits(2, 0...59) else { return nil }
        var millis = 0
        if expect(":") {
            guard let second = digits(2, 0...59) else { return nil }
            millis = second * 1000
            if expect(".") {
                var scale = 100
                var sawDigit = false
                while let b = peek(), b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") {
                    millis += Int(b - UInt8(ascii: "0")) * scale
                    scale /= 10
                    sawDigit = true
                    index += 1
                }
                guard sawDigit else { return nil }
            }
        }
        return (hour, minute, millis)
    }

    /// '' (0), 'Z', or '±HH:MM' as minutes east of UTC; nil when malformed.
    mutating func zone() -> Int? {
        guard let b = peek() else { return 0 }
        if b == UInt8(ascii: "Z") || b == UInt8(ascii: "z") {
            index += 1
            return 0
        }
        guard b == UInt8(ascii: "+") || b == UInt8(ascii: "-") else { return 0 }
        index += 1
        guard let hours = digits(2, 0...14), expect(":"), let minutes = digits(2, 0...59) else { return nil }
        return (b == UInt8(ascii: "-") ? -1 : 1) * (hours * 60 + minutes)
    }
}
