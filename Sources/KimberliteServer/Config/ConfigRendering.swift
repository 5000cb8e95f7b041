extension ServerConfig {
    /// Placeholder printed instead of a redacted value.
    public static let redactedPlaceholder = "<redacted>"

    /// The configuration as a complete TOML document, every section and key in
    /// file order; unset optional keys appear as comments. Parsing the output
    /// with `ConfigLoader` gives back an equal configuration (unless something
    /// was redacted). This is what `--show-config` prints.
    ///
    /// Redaction: no key today holds a secret — `tls_cert`, `tls_key` and
    /// `tls_ca` are file paths and are shown. With `redactSecrets`, a value
    /// that is itself key material or a token (a PEM block pasted where a path
    /// belongs) is printed as `"<redacted>"`.
    public func renderTOML(redactSecrets: Bool = true) -> String {
        var lines: [String] = [
            "# kimberlite-server effective configuration (defaults < config file < environment < flags).",
            redactSecrets
                ? "# Secrets redacted: values holding key material or tokens (a PEM block where a path belongs) print as \"\(ServerConfig.redactedPlaceholder)\"; paths such as tls_key are shown."
                : "# Secrets NOT redacted.",
            "# Sizes use binary units (1MB = 1024 * 1024 bytes).",
        ]
        let notInEffect = Set(ServerConfig.keysNotInEffectYet)
        for section in ConfigKey.sections {
            lines.append("")
            lines.append("[\(section)]")
            for key in ConfigKey.allCases where key.section == section {
                var note = notInEffect.contains(key.qualifiedName) ? "  # not in effect yet" : ""
                guard var literal = key.tomlLiteral(in: self) else {
                    lines.append("# \(key.name) = \"\"  # unset\(note.isEmpty ? "" : "; not in effect yet")")
                    continue
                }
                if redactSecrets, ServerConfig.looksSecret(key: key, in: self) {
                    literal = TOMLText.quote(ServerConfig.redactedPlaceholder)
                    note += note.isEmpty ? "  # redacted" : "; redacted"
                }
                lines.append("\(key.name) = \(literal)\(note)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// True when a key's value is key material or a token rather than a path or setting.
    static func looksSecret(key: ConfigKey, in config: ServerConfig) -> Bool {
        let value: String?
        switch key {
        case .tlsCert: value = config.security.tlsCert
        case .tlsKey: value = config.security.tlsKey
        case .tlsCA: value = config.security.tlsCA
        default: value = nil
        }
        guard let value else { return false }
        return value.contains("-----BEGIN") || value.contains("PRIVATE KEY")
    }
}
