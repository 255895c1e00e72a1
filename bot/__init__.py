"""The bot process: configuration, dispatcher wiring, i18n, and the outbound sender."""
