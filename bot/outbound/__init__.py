"""The outbound side: everything the bot sends.

- ``sender``: delivers the outbox (cards, notices, broadcasts), rate-limited, lease-claimed, crash-safe;
- ``notices``: renders one outbox row into a Bot API call in the recipient's language;
- ``shared_rate``: the send rate shared by every process through Redis;
- ``replies``: the retry policy and per-chat pacing of direct replies to the person in front of the bot.
"""
