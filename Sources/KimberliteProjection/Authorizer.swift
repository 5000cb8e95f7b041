import CSQLite

/// Per-connection authorizer state (`sqlite3_set_authorizer`). SQLite calls
/// it while preparing (and re-preparing) a statement, once per table,
/// column, function, pragma or transaction step the statement uses.
///
/// Modes: `.trusted` for our own SQL (everything allowed); `.user` denies
/// what `Refusal` lists and remembers the first reason, so the error shows
/// our reason instead of SQLite's bare "not authorized"; `.record` allows
/// everything but notes refusals and called functions, for `validate`.
final class AuthorizerState {
    enum Mode { case trusted, user, record }

    var mode: Mode = .trusted
    private(set) var refusal: Refusal?
    private(set) var findings: [Refusal] = []
    private(set) var functions: [String] = []

    /// Clears what the previous statement left and switches mode.
    func begin(_ mode: Mode) {
        self.mode = mode
        refusal = nil
        findings = []
        functions = []
    }

    /// Installs this state as `connection`'s authorizer. The connection must
    /// not outlive `self` (the owner keeps both).
    func install(on connection: SQLiteConnection) {
        let pointer = Unmanaged.passUnretained(self).toOpaque()
        sqlite3_set_authorizer(connection.db, { user, action, a1, a2, _, _ in
            guard let user else { return SQLITE_OK }
            let state = Unmanaged<AuthorizerState>.fromOpaque(user).takeUnretainedValue()
            return state.authorize(action, a1.map { String(cString: $0) }, a2.map { String(cString: $0) })
        }, pointer)
    }

    private func authorize(_ action: Int32, _ a1: String?, _ a2: String?) -> Int32 {
        switch mode {
        case .trusted:
            return SQLITE_OK
        case .record:
            if action == SQLITE_FUNCTION, let name = a2 { functions.append(name.lowercased()) }
            if let found = Self.classify(action, a1, a2) { findings.append(found) }
            return SQLITE_OK
        case .user:
            guard let found = Self.classify(action, a1, a2) else { return SQLITE_OK }
            if refusal == nil { refusal = found }
            return SQLITE_DENY
        }
    }

    /// Actions whose first argument names a table, index, trigger or view.
    private static let firstArgumentIsObject: Set<Int32> = [
        SQLITE_CREATE_INDEX, SQLITE_CREATE_TABLE, SQLITE_CREATE_TEMP_INDEX, SQLITE_CREATE_TEMP_TABLE,
        SQLITE_CREATE_TEMP_TRIGGER, SQLITE_CREATE_TEMP_VIEW, SQLITE_CREATE_TRIGGER, SQLITE_CREATE_VIEW,
        SQLITE_DELETE, SQLITE_DROP_INDEX, SQLITE_DROP_TABLE, SQLITE_DROP_TEMP_INDEX, SQLITE_DROP_TEMP_TABLE,
        SQLITE_DROP_TEMP_TRIGGER, SQLITE_DROP_TEMP_VIEW, SQLITE_DROP_TRIGGER, SQLITE_DROP_VIEW, SQLITE_INSERT,
        SQLITE_READ, SQLITE_UPDATE, SQLITE_REINDEX, SQLITE_ANALYZE, SQLITE_CREATE_VTABLE, SQLITE_DROP_VTABLE,
    ]
    /// Actions whose second argument names the table acted on.
    private static let secondArgumentIsTable: Set<Int32> = [
        SQLITE_CREATE_INDEX, SQLITE_CREATE_TEMP_INDEX, SQLITE_CREATE_TEMP_TRIGGER, SQLITE_CREATE_TRIGGER,
        SQLITE_DROP_INDEX, SQLITE_DROP_TEMP_INDEX, SQLITE_DROP_TEMP_TRIGGER, SQLITE_DROP_TRIGGER, SQLITE_ALTER_TABLE,
    ]

    static func classify(_ action: Int32, _ a1: String?, _ a2: String?) -> Refusal? {
        switch action {
        case SQLITE_ATTACH: return .attach("ATTACH")
        case SQLITE_DETACH: return .attach("DETACH")
        case SQLITE_TRANSACTION, SQLITE_SAVEPOINT: return .transactionControl
        case SQLITE_PRAGMA: return PragmaPolicy.refusal(name: a1 ?? "", argument: a2)
        default: break
        }
        // The audit trail is readable by anyone who may query; only the node writes it.
        if action == SQLITE_READ, a1?.lowercased() == "_kmb_audit" { return nil }
        if firstArgumentIsObject.contains(action), let name = a1, isInternal(name) { return .internalTable(name) }
        if secondArgumentIsTable.contains(action), let name = a2, isInternal(name) { return .internalTable(name) }
        return nil
    }

    static func isInternal(_ name: String) -> Bool { name.lowercased().hasPrefix("_kmb_") }
}
