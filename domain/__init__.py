"""The product's rules, in plain async Python: structure, routing, the ticket lifecycle, access.

Nothing here imports aiogram. Entry points open their own short transaction on the session they are
given, so a caller never holds a database lock while it talks to Telegram.
"""
