"""The bot process: configuration, CLI, dispatcher wiring, middlewares, i18n and intake.

What people see lives in ``bot.views``; what the bot sends (outbox, notices, direct replies) in ``bot.outbound``.
"""
